"""tmux command lines and output parsers. Pure: builds argv lists, parses text.

fleetd finds an agent's pane by a pane option, ``@fleetd_agent=<name>``, not by
window name, so an operator renaming a window does not make fleetd start a second
copy. Agent panes get ``remain-on-exit on`` so that a dead agent's pane keeps its
scrollback and tmux keeps its exit status and signal until fleetd has read them.

Quoting rules learned from tmux 3.3 (see tests/integration/test_tmux_quoting.py):
``-c`` (start directory) and ``-n`` (window name) are format-expanded by tmux, so a
``#(...)`` in them would run a shell command; :func:`literal` doubles every ``#``.
Command arguments and ``-e`` values are passed through unexpanded. A command given
as two or more arguments is exec'd directly; fleetd therefore always passes argv
lists (a roster command written as one string runs as ``/bin/sh -c STRING``).
Any argument that ends in ``;`` is a command separator to tmux (the rest of the
argv would run as tmux commands, ``run-shell`` included); :func:`arg` escapes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

AGENT_OPTION = "@fleetd_agent"
FIELD_SEP = "\t"
# The agent tag first; the only free-text field (the process name) last, so that
# anything it contains, tabs included, cannot shift the other fields.
PANE_FORMAT = FIELD_SEP.join(
    [
        "#{" + AGENT_OPTION + "}",
        "#{pane_id}",
        "#{pane_pid}",
        "#{pane_dead}",
        "#{pane_dead_status}",
        "#{pane_dead_signal}",
        "#{pane_dead_time}",
        "#{window_activity}",
        "#{session_name}",
        "#{pane_current_command}",
    ]
)
PLACEHOLDER = ("sleep", "2147483647")
NO_SERVER_MARKERS = ("no server running", "error connecting to", "No such file or directory")


@dataclass(frozen=True, slots=True)
class Pane:
    agent: str
    pane_id: str
    pid: int
    dead: bool
    dead_status: int | None
    dead_signal: int | None
    dead_time: float | None
    activity: float | None
    session: str
    current_command: str


@dataclass(frozen=True, slots=True)
class PaneList:
    """One tmux server's agent panes, keyed by agent name."""

    server_running: bool
    panes: dict[str, Pane]
    bad_lines: int = 0
    duplicates: tuple[str, ...] = ()


def arg(value: str) -> str:
    """Protect one argument from tmux's command-sequence parsing (trailing ``;``)."""
    if value.endswith(";"):
        return value[:-1] + "\\;"
    return value


def literal(value: str) -> str:
    """Protect a value that tmux format-expands (``-c``, ``-n``) and parses."""
    return arg(value.replace("#", "##"))


def base(socket: str) -> list[str]:
    # -u: without a UTF-8 locale (systemd services, SSH sessions) tmux prints the
    # tabs of a -F format as '_', and no pane line would parse.
    return ["tmux", "-u", "-L", socket]


def list_panes(socket: str) -> list[str]:
    return [*base(socket), "list-panes", "-a", "-F", PANE_FORMAT]


def is_no_server(stderr: str) -> bool:
    return any(m in stderr for m in NO_SERVER_MARKERS)


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def parse_panes(text: str) -> PaneList:
    """Parse ``list-panes -a -F PANE_FORMAT`` output. Untagged panes are skipped;
    a malformed line is counted, never guessed at."""
    panes: dict[str, Pane] = {}
    bad = 0
    dups: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(FIELD_SEP, 9)
        if len(parts) != 10:
            bad += 1
            continue
        tag, pane_id, pid, dead, status, sig, dtime, activity, session, cmd = parts
        if not tag:
            continue
        pid_v = _int_or_none(pid)
        if pid_v is None or not pane_id.startswith("%") or dead not in ("0", "1"):
            bad += 1
            continue
        pane = Pane(
            agent=tag,
            pane_id=pane_id,
            pid=pid_v,
            dead=dead == "1",
            dead_status=_int_or_none(status),
            dead_signal=_int_or_none(sig),
            dead_time=float(t) if (t := _int_or_none(dtime)) else None,
            activity=float(a) if (a := _int_or_none(activity)) else None,
            session=session,
            current_command=cmd,
        )
        if tag in panes:
            dups.append(tag)
            # Keep the lowest pane id: the one fleetd created first.
            if int(pane.pane_id[1:]) > int(panes[tag].pane_id[1:]):
                continue
        panes[tag] = pane
    return PaneList(server_running=True, panes=panes, bad_lines=bad, duplicates=tuple(dups))


def new_session(socket: str, session: str, window: str) -> list[str]:
    return [
        *base(socket),
        "new-session",
        "-d",
        "-s",
        session,
        "-n",
        literal(window),
        "-x",
        "220",
        "-y",
        "50",
        "-P",
        "-F",
        "#{pane_id}",
        *PLACEHOLDER,
    ]


def new_window(socket: str, session: str, window: str) -> list[str]:
    return [
        *base(socket),
        "new-window",
        "-d",
        "-t",
        f"={session}:",
        "-n",
        literal(window),
        "-P",
        "-F",
        "#{pane_id}",
        *PLACEHOLDER,
    ]


def tag_pane(socket: str, pane_id: str, agent: str) -> list[str]:
    return [
        *base(socket),
        "set-option",
        "-p",
        "-t",
        pane_id,
        "remain-on-exit",
        "on",
        ";",
        "set-option",
        "-p",
        "-t",
        pane_id,
        AGENT_OPTION,
        arg(agent),
        ";",
        "set-option",
        "-p",
        "-t",
        pane_id,
        "allow-rename",
        "off",
    ]


def respawn(
    socket: str,
    pane_id: str,
    argv: Sequence[str],
    workdir: str,
    env: Mapping[str, str],
) -> list[str]:
    """Kill whatever runs in the pane and start ``argv``; prints the new pane pid."""
    if len(argv) < 2:
        # One argument would go through the user's shell; keep exec semantics.
        argv = ["/bin/sh", "-c", 'exec "$0"', *argv]
    # History is cleared first: forensics were captured already, and each record
    # should hold only the lines of the run that ended.
    cmd = [*base(socket), "clear-history", "-t", pane_id, ";"]
    cmd += ["respawn-pane", "-k", "-t", pane_id, "-c", literal(workdir)]
    for key, value in env.items():
        cmd += ["-e", arg(f"{key}={value}")]
    cmd += [*(arg(a) for a in argv), ";", "display-message", "-p", "-t", pane_id, "#{pane_pid}"]
    return cmd


def capture(socket: str, pane_id: str, lines: int) -> list[str]:
    return [*base(socket), "capture-pane", "-p", "-J", "-t", pane_id, "-S", f"-{lines}"]


def last_lines(text: str, n: int) -> str:
    """The last ``n`` lines the agent printed: trailing blank lines and the
    "Pane is dead (status 3, <date>)" line tmux adds under remain-on-exit are dropped."""
    rows = text.rstrip("\n").splitlines()
    while rows and (not rows[-1].strip() or rows[-1].startswith("Pane is dead")):
        rows.pop()
    return "\n".join(rows[-n:])
