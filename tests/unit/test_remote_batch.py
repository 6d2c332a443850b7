"""The observe script, run by a real local ``sh`` (no ssh), with hostile inputs.

The script is executed twice per case: as the argv itself (``sh -c SCRIPT ...``)
and as the single ``shlex.join`` string a remote login shell receives over SSH
(``sh -c "<joined>"``). Hostile socket names, paths and file contents must run
nothing and round-trip exactly.
"""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd import tmux
from fleetd.errors import RemoteOutputInvalid
from fleetd.hosts.base import ObserveRequest
from fleetd.hosts.remote_batch import (
    OBSERVE_SCRIPT,
    build_observe_script,
    parse_df,
    parse_observe_output,
)
from tests.conftest import require_binary

HOSTILE = [
    "'; touch pwned-q #",
    "$(touch pwned-d)",
    "`touch pwned-b`",
    "#(touch pwned-h)",
    "a\ntouch pwned-n",
    "-n",
    "--help",
    "x;touch pwned-s;",
    '"; touch pwned-dq; "',
    "*",
    "~",
]
DELIMITER_CONTENT = (
    b"fleetd-observe 1\nT 0 AAAA\nF 1 -\nW 1 -\nEND 3\n$(touch pwned-c)\n\x00\xff binary\n"
)


def run_script(argv: list[str], cwd: Path, env: dict[str, str], joined: bool) -> str:
    cmd = ["sh", "-c", shlex.join(argv)] if joined else argv
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, timeout=20, check=False, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def pwned(where: list[Path]) -> list[str]:
    found = []
    for d in where:
        found += [str(p) for p in d.glob("pwned*")]
    return found


@pytest.fixture
def tmux_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A private tmux server with one tagged agent pane and one untagged pane."""
    require_binary("tmux")
    tmpdir = tmp_path / "tmux"
    tmpdir.mkdir()
    # Like an SSH session: no locale at all (tmux then needs -u to keep tabs).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "TMUX"))}
    env["TMUX_TMPDIR"] = str(tmpdir)
    sock = f"fleetd-rb-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        tmux.new_session(sock, "fleet", "w1"), env=env, capture_output=True, text=True, check=True
    )
    pane = out.stdout.strip()
    try:
        subprocess.run(tmux.tag_pane(sock, pane, "coder-1"), env=env, check=True)
        subprocess.run(tmux.new_window(sock, "fleet", "w2"), env=env, check=True)
        yield sock, env
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], env=env, check=False)


@pytest.mark.parametrize("joined", [False, True], ids=["argv", "ssh-joined"])
def test_hostile_names_and_contents(
    tmp_path: Path, tmux_server: tuple[str, dict[str, str]], joined: bool
) -> None:
    sock, env = tmux_server
    work = tmp_path / "work"
    work.mkdir()
    files: list[str] = []
    expected: dict[str, bytes | None] = {}
    for i, name in enumerate(HOSTILE):
        if "/" in name:
            continue
        path = work / name
        if name not in ("*", "~"):
            content = f"file {i}: {name}\n".encode() + DELIMITER_CONTENT
            path.write_bytes(content)
            expected[str(path)] = content
        else:
            expected[str(path)] = None
        files.append(str(path))
        # Relative names too: resolved against the script's working directory.
        files.append(name)
        expected[name] = expected[str(path)]
    files.append(str(work / "missing"))
    expected[str(work / "missing")] = None
    (work / "empty").write_bytes(b"")
    files.append(str(work / "empty"))
    expected[str(work / "empty")] = b""
    files.append(str(work))  # a directory is not a file
    expected[str(work)] = None
    files.append("/tmp/'; touch /tmp/pwned-abs #")
    expected[files[-1]] = None

    sockets = (sock, *HOSTILE)
    request = ObserveRequest(sockets=sockets, files=tuple(files), health_path=str(tmp_path))
    out = run_script(build_observe_script(request), work, env, joined)
    snap = parse_observe_output(out, request)

    assert pwned([work, tmp_path, Path("/tmp")]) == []
    assert snap.files == expected
    assert snap.panes[sock].server_running
    assert list(snap.panes[sock].panes) == ["coder-1"]
    assert snap.panes[sock].bad_lines == 0
    for name in HOSTILE:
        assert snap.panes[name].server_running is False, name
    assert snap.health is not None
    assert 0.0 <= snap.health.disk_free_pct <= 100.0
    assert 0.0 < snap.health.mem_available_pct <= 100.0
    assert snap.health.cpus >= 1
    assert snap.wall > 1.7e9
    assert snap.errors == ()


def test_hostile_health_path(tmp_path: Path) -> None:
    request = ObserveRequest(sockets=(), files=(), health_path="/nonexistent; touch pwned-hp")
    out = run_script(build_observe_script(request), tmp_path, dict(os.environ), True)
    snap = parse_observe_output(out, request)
    assert pwned([tmp_path]) == []
    assert snap.health is None
    assert len(snap.errors) == 1 and snap.errors[0].startswith("health: df failed")


def test_no_health_no_sockets(tmp_path: Path) -> None:
    request = ObserveRequest(sockets=(), files=(), health_path=None)
    snap = parse_observe_output(
        run_script(build_observe_script(request), tmp_path, dict(os.environ), False), request
    )
    assert snap.panes == {} and snap.files == {} and snap.health is None


def test_script_is_constant_and_args_are_separate() -> None:
    request = ObserveRequest(sockets=("$(id)",), files=("'x'",), health_path="/")
    argv = build_observe_script(request)
    assert argv[:3] == ["sh", "-c", OBSERVE_SCRIPT]
    assert "$(id)" not in argv[2] and "'x'" not in argv[2]
    assert argv[-2:] == ["$(id)", "'x'"]


def test_login_banner_is_skipped(tmp_path: Path) -> None:
    request = ObserveRequest(sockets=(), files=(), health_path=None)
    out = run_script(build_observe_script(request), tmp_path, dict(os.environ), False)
    snap = parse_observe_output("Welcome to host\nfleetd-observe 1 maybe\n" + out, request)
    assert snap.files == {}


GOOD = "fleetd-observe 1\nT 1 bm8gc2VydmVyIHJ1bm5pbmc=\nF 1 aGk=\nW 1764060000.5 -\nEND 3\n"
REQ = ObserveRequest(sockets=("s",), files=("f",), health_path=None)


def test_parse_minimal() -> None:
    snap = parse_observe_output(GOOD, REQ)
    assert snap.panes["s"].server_running is False
    assert snap.files == {"f": b"hi"}
    assert snap.wall == 1764060000.5


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage\n",
        GOOD.replace("END 3\n", ""),  # truncated
        GOOD[: GOOD.index("W")],  # cut mid-way
        GOOD.replace("END 3", "END 4"),
        GOOD.replace("aGk=", "a G k"),
        GOOD.replace("aGk=", "!!!"),
        GOOD.replace("F 1", "F 7"),
        GOOD.replace("T 1", "T x"),
        GOOD.replace("1764060000.5", "noon"),
        GOOD.replace("F 1 aGk=\n", "T 1 aGk=\n"),
    ],
)
def test_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(RemoteOutputInvalid):
        parse_observe_output(text, REQ)


def test_tmux_failure_other_than_no_server_is_an_error() -> None:
    msg = base64.b64encode(b"sh: 1: tmux: not found").decode()
    text = f"fleetd-observe 1\nT 127 {msg}\nF 0 -\nW 1 -\nEND 3\n"
    snap = parse_observe_output(text, REQ)
    assert "s" not in snap.panes
    assert "tmux: not found" in snap.errors[0]


def test_parse_df_with_spaces_in_filesystem_name() -> None:
    text = (
        "Filesystem 1024-blocks Used Available Capacity Mounted on\n"
        "my fs 1000 250 750 25% /mnt/a b\n"
    )
    assert parse_df(text) == 75.0
