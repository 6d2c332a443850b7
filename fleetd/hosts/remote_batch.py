"""The one remote command an agentless SSH host runs per observation cycle.

:func:`build_observe_script` returns an argv: ``sh -c SCRIPT fleetd-observe ARGS...``.
SCRIPT is a constant; every variable part (tmux socket names, file paths, the disk
path, the tmux format) travels as a positional argument, so nothing from a roster
value, a pane title or a heartbeat is ever parsed as shell text by the script.
SSH exec sends a single command string to the remote login shell; the caller
joins the argv with :func:`shlex.join`, which quotes every argument. (That shell
must therefore be POSIX-like: sh, dash, bash, zsh, ksh. fish and csh are not.)

The output is one record per line, ``KIND META PAYLOAD``, where PAYLOAD is
base64 (no spaces, no newlines) and META is a number or a timestamp. No content
can contain a record separator, so a heartbeat file holding fake records, or a
process named with a newline, parses exactly. The first line is a version
banner and the last an ``END`` trailer with the record count: output cut short
by a dying connection is refused, never half-read.

Records, in order::

    fleetd-observe 1
    T <rc> <b64 tmux list-panes stdout+stderr>     one per requested socket
    F <1|0> <b64 content>                          one per requested file (0: missing)
    W <date +%s.%N>                                the host's wall clock
    D <rc> <b64 df -P -k output>                   only with a health path
    M <rc> <b64 MemTotal/MemAvailable lines>
    L <rc> <b64 /proc/loadavg>
    N <rc> <b64 nproc>
    END <number of records before END>

tmux runs with ``-u``: an SSH session usually has no UTF-8 locale, and a tmux
client without one prints every tab of the ``-F`` format as ``_``, which would
make every pane line unparsable.

tmux's stderr is merged into its stdout: on success list-panes writes nothing to
stderr, and on failure nothing to stdout, so the exit status tells which one the
text is (``no server running`` is then recognised with :func:`fleetd.tmux.is_no_server`).
Files are read through a redirection, with no temp files, so an observation still
works on a host whose disk is full, which is exactly when it matters.
"""

from __future__ import annotations

import base64
import binascii
import re

from fleetd.errors import RemoteOutputInvalid
from fleetd.heartbeat import MAX_HEARTBEAT_BYTES
from fleetd.hosts.base import HostHealth, HostSnapshot, ObserveRequest
from fleetd.tmux import PANE_FORMAT, PaneList, is_no_server, parse_panes

VERSION_LINE = "fleetd-observe 1"
SCRIPT_NAME = "fleetd-observe"
# One byte over the heartbeat limit, like the local reader: an oversized file is
# visible as such to the heartbeat parser instead of silently truncated to valid.
FILE_READ_LIMIT = MAX_HEARTBEAT_BYTES + 1

# $1 tmux format, $2 byte limit per file, $3 disk path ('' = no health),
# $4 number of sockets, then the sockets, then the files.
# Every expansion is double-quoted; the script never evals, never builds a command
# from an argument, and passes paths to commands only after '--' or as redirections.
OBSERVE_SCRIPT = r"""
fmt=$1; limit=$2; health=$3; nsock=$4
shift 4
b64() { base64 | tr -d '\n'; }
n=0
echo 'fleetd-observe 1'
i=0
while [ "$i" -lt "$nsock" ]; do
  out=$(tmux -u -L "$1" list-panes -a -F "$fmt" 2>&1); rc=$?
  printf 'T %s %s\n' "$rc" "$(printf '%s' "$out" | b64)"
  shift; i=$((i + 1)); n=$((n + 1))
done
for f in "$@"; do
  # Two processes per file and no subshell: the cycle's cost is mostly these forks.
  if [ -f "$f" ] && [ -r "$f" ]; then
    printf 'F 1 '; head -c "$limit" <"$f" 2>/dev/null | base64 -w 0; echo
  else
    printf 'F 0 -\n'
  fi
  n=$((n + 1))
done
printf 'W %s -\n' "$(date +%s.%N)"; n=$((n + 1))
if [ -n "$health" ]; then
  d=$(df -P -k -- "$health" 2>&1); rc=$?
  printf 'D %s %s\n' "$rc" "$(printf '%s' "$d" | b64)"
  m=$(grep -E '^(MemTotal|MemAvailable):' /proc/meminfo 2>&1); rc=$?
  printf 'M %s %s\n' "$rc" "$(printf '%s' "$m" | b64)"
  l=$(cat /proc/loadavg 2>&1); rc=$?
  printf 'L %s %s\n' "$rc" "$(printf '%s' "$l" | b64)"
  c=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>&1); rc=$?
  printf 'N %s %s\n' "$rc" "$(printf '%s' "$c" | b64)"
  n=$((n + 4))
fi
echo "END $n"
"""


def build_observe_script(request: ObserveRequest) -> list[str]:
    """The argv of the observation command for ``request`` (join with shlex.join)."""
    return [
        "sh",
        "-c",
        OBSERVE_SCRIPT,
        SCRIPT_NAME,
        PANE_FORMAT,
        str(FILE_READ_LIMIT),
        request.health_path or "",
        str(len(request.sockets)),
        *request.sockets,
        *request.files,
    ]


def _b64(payload: str, what: str) -> bytes:
    if payload == "-":
        return b""
    try:
        return base64.b64decode(payload.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise RemoteOutputInvalid(f"observe output: {what}: payload is not base64") from None


def _records(text: str) -> list[tuple[str, str, str]]:
    lines = text.splitlines()
    # Login shells may print a banner (motd, profile noise) before our output;
    # everything up to the last version line is ignored.
    try:
        start = len(lines) - 1 - lines[::-1].index(VERSION_LINE)
    except ValueError:
        raise RemoteOutputInvalid(
            "observe output has no 'fleetd-observe 1' banner: the remote shell did not "
            f"run the script (first bytes: {text[:120]!r})"
        ) from None
    body = lines[start + 1 :]
    if not body or not body[-1].startswith("END "):
        raise RemoteOutputInvalid("observe output is truncated: no END trailer")
    records: list[tuple[str, str, str]] = []
    for no, line in enumerate(body[:-1], 1):
        parts = line.split(" ")
        if len(parts) != 3 or not parts[0]:
            raise RemoteOutputInvalid(f"observe output record {no} is malformed: {line[:80]!r}")
        records.append((parts[0], parts[1], parts[2]))
    declared = body[-1][4:].strip()
    if not declared.isdigit() or int(declared) != len(records):
        raise RemoteOutputInvalid(
            f"observe output has {len(records)} records but its trailer says {declared!r}"
        )
    return records


def _rc(meta: str, what: str) -> int:
    if not meta.lstrip("-").isdigit():
        raise RemoteOutputInvalid(f"observe output: {what}: exit status {meta!r} is not a number")
    return int(meta)


_DF_ROW = re.compile(r"\s(\d+)\s+(\d+)\s+(\d+)\s+(\d+)%\s")
_WALL = re.compile(r"^(\d+)(\.\d+)?")


def parse_df(text: str) -> float:
    """Free-space percentage from ``df -P -k`` output (the filesystem name may hold spaces)."""
    rows = text.strip().splitlines()
    match = _DF_ROW.search(rows[-1] + " ") if len(rows) >= 2 else None
    if match is None:
        raise ValueError(f"unexpected df output: {text[:120]!r}")
    total, _used, avail = (int(match.group(i)) for i in (1, 2, 3))
    return round(100.0 * avail / total, 2) if total else 0.0


def parse_meminfo(text: str) -> float:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key.strip()] = int(fields[0])
    if "MemTotal" not in values or "MemAvailable" not in values:
        raise ValueError(f"unexpected /proc/meminfo lines: {text[:120]!r}")
    total = values["MemTotal"]
    return round(100.0 * values["MemAvailable"] / total, 2) if total else 0.0


def _health(sections: dict[str, tuple[int, str]], errors: list[str]) -> HostHealth | None:
    for kind, label in (("D", "df"), ("M", "meminfo"), ("L", "loadavg"), ("N", "nproc")):
        rc, out = sections[kind]
        if rc != 0:
            errors.append(f"health: {label} failed (exit {rc}): {out.strip()[:200]}")
            return None
    try:
        return HostHealth(
            disk_free_pct=parse_df(sections["D"][1]),
            mem_available_pct=parse_meminfo(sections["M"][1]),
            load1=float(sections["L"][1].split()[0]),
            cpus=max(1, int(sections["N"][1].strip())),
        )
    except (ValueError, IndexError) as exc:
        # A host without /proc (or with an odd df) still yields panes and files.
        errors.append(f"health: {exc}")
        return None


def parse_observe_output(text: str, request: ObserveRequest) -> HostSnapshot:
    """Turn the script's output back into a snapshot. Raises RemoteOutputInvalid."""
    records = _records(text)
    expected_kinds = (
        ["T"] * len(request.sockets)
        + ["F"] * len(request.files)
        + ["W"]
        + (["D", "M", "L", "N"] if request.health_path else [])
    )
    kinds = [r[0] for r in records]
    if kinds != expected_kinds:
        raise RemoteOutputInvalid(
            f"observe output records {''.join(kinds)!r} do not match the request "
            f"(expected {''.join(expected_kinds)!r})"
        )
    errors: list[str] = []
    panes: dict[str, PaneList] = {}
    it = iter(records)
    for sock in request.sockets:
        _, meta, payload = next(it)
        rc = _rc(meta, f"tmux socket {sock!r}")
        out = _b64(payload, f"tmux socket {sock!r}").decode("utf-8", "replace")
        if rc == 0:
            panes[sock] = parse_panes(out)
        elif is_no_server(out):
            panes[sock] = PaneList(server_running=False, panes={})
        else:
            errors.append(f"tmux list-panes on socket {sock!r} failed (exit {rc}): {out.strip()}")
    files: dict[str, bytes | None] = {}
    for path in request.files:
        _, meta, payload = next(it)
        if meta not in ("0", "1"):
            raise RemoteOutputInvalid(f"observe output: file {path!r}: bad marker {meta!r}")
        files[path] = _b64(payload, f"file {path!r}") if meta == "1" else None
    _, wall_text, _ = next(it)
    wall = _WALL.match(wall_text)
    if wall is None:
        raise RemoteOutputInvalid(f"observe output: host clock {wall_text!r} is not a time")
    health = None
    if request.health_path:
        sections = {}
        for kind, meta, payload in it:
            sections[kind] = (
                _rc(meta, kind),
                _b64(payload, f"health {kind}").decode("utf-8", "replace"),
            )
        health = _health(sections, errors)
    return HostSnapshot(
        panes=panes,
        files=files,
        health=health,
        # busybox date prints a literal 'N' for %N; seconds are then all we have.
        wall=float(wall.group(0)),
        errors=tuple(errors),
    )
