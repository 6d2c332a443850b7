"""fleetctl deadman's check against real Unix socket servers, files and processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.deadman import DeadmanResult, check, report_to_journal, write_self_heartbeat
from fleetd.heartbeat import Heartbeat, parse_heartbeat
from fleetd.journal import JournalWriter
from tests.journald import Journald, running_journald

NOW = 1_800_000_000.0


class PingServer:
    """A tiny control socket: answers ping like fleetd, or never answers ("stuck")."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.mode = mode
        self.requests: list[dict[str, object]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "stuck":
                self.held.append(conn)  # never read, never answer
                continue
            with conn:
                conn.settimeout(5)
                buf = b""
                while b"\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                req = json.loads(buf.partition(b"\n")[0])
                self.requests.append(req)
                if self.mode == "ok":
                    reply = {"v": 1, "id": req["id"], "ok": True, "result": {"pong": True}}
                else:
                    err = {"code": "protocol.forbidden", "message": "no"}
                    reply = {"v": 1, "id": req["id"], "ok": False, "error": err}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PingServer]:
    mode = getattr(request, "param", "ok")
    s = PingServer(tmp_path / "control.sock", mode)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def heartbeat(tmp_path: Path) -> Path:
    path = tmp_path / "fleetd.heartbeat"
    write_self_heartbeat(path, NOW - 5, os.getpid(), "supervising")
    return path


def test_alive(server: PingServer, heartbeat: Path) -> None:
    result = check(server.path, heartbeat, max_age=60, now_wall=NOW, timeout=5)
    assert result == DeadmanResult(ok=True, problems=(), heartbeat_age=5.0, pid=os.getpid())
    assert server.requests == [{"v": 1, "id": 1, "cmd": "ping", "args": {}}]
    assert "alive" in result.summary()


def test_stale_heartbeat(server: PingServer, heartbeat: Path) -> None:
    result = check(server.path, heartbeat, max_age=60, now_wall=NOW + 407, timeout=5)
    assert not result.ok
    assert result.heartbeat_age == pytest.approx(412)
    assert result.problems == (
        f"fleetd is not running or is stuck: heartbeat file {heartbeat} is 412s old "
        f"(limit 60s, last status 'supervising', pid {os.getpid()})",
    )


def test_missing_heartbeat(server: PingServer, tmp_path: Path) -> None:
    path = tmp_path / "nope.heartbeat"
    result = check(server.path, path, max_age=60, now_wall=NOW, timeout=5)
    assert not result.ok
    assert result.pid is None
    assert result.heartbeat_age is None
    assert result.problems == (f"fleetd is not running: heartbeat file {path} does not exist",)


def test_torn_heartbeat(server: PingServer, tmp_path: Path) -> None:
    path = tmp_path / "torn.heartbeat"
    path.write_text("ts=2026-01-01T00:00:00+00:00\npid=12")
    result = check(server.path, path, max_age=60, now_wall=NOW, timeout=5)
    assert not result.ok
    assert "is unusable (torn:" in result.problems[0]


def test_dead_pid(server: PingServer, tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    path = tmp_path / "fleetd.heartbeat"
    write_self_heartbeat(path, NOW, child.pid, "supervising")
    result = check(server.path, path, max_age=60, now_wall=NOW, timeout=5)
    assert not result.ok
    assert result.pid == child.pid
    assert result.problems == (
        f"fleetd is not running: pid {child.pid} from its heartbeat file does not exist",
    )


def test_zombie_pid(server: PingServer, tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not reaped yet: a zombie, as a crashed fleetd whose parent is slow.
        deadline = time.monotonic() + 30
        stat = Path(f"/proc/{child.pid}/stat")
        while stat.read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        path = tmp_path / "fleetd.heartbeat"
        write_self_heartbeat(path, NOW, child.pid, "supervising")
        result = check(server.path, path, max_age=60, now_wall=NOW, timeout=5)
        assert result.problems == (
            f"fleetd is not running: pid {child.pid} from its heartbeat file is a zombie",
        )
    finally:
        child.wait(timeout=30)


def test_no_socket(tmp_path: Path, heartbeat: Path) -> None:
    path = tmp_path / "control.sock"
    result = check(path, heartbeat, max_age=60, now_wall=NOW, timeout=5)
    assert result.problems == (f"fleetd is not running: control socket {path} does not exist",)


def test_stale_socket_file(tmp_path: Path, heartbeat: Path) -> None:
    path = tmp_path / "control.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: fleetd crashed without cleanup
    result = check(path, heartbeat, max_age=60, now_wall=NOW, timeout=5)
    assert result.problems == (
        f"fleetd is not running: nothing listens on control socket {path} (stale socket file)",
    )


@pytest.mark.parametrize("server", ["stuck"], indirect=True)
def test_socket_not_answering(server: PingServer, heartbeat: Path) -> None:
    result = check(server.path, heartbeat, max_age=60, now_wall=NOW, timeout=0.5)
    assert result.problems == (
        f"fleetd is stuck: control socket {server.path} did not answer a ping within 0.5s",
    )


@pytest.mark.parametrize("server", ["refuse"], indirect=True)
def test_socket_error_reply(server: PingServer, heartbeat: Path) -> None:
    result = check(server.path, heartbeat, max_age=60, now_wall=NOW, timeout=5)
    assert result.problems == (
        f"fleetd refused the ping on control socket {server.path}: protocol.forbidden",
    )


def test_everything_wrong_reports_everything(tmp_path: Path) -> None:
    result = check(tmp_path / "c.sock", tmp_path / "h", max_age=60, now_wall=NOW, timeout=1)
    assert len(result.problems) == 2
    assert not result.ok


def test_write_self_heartbeat_is_atomic_and_parsable(tmp_path: Path) -> None:
    path = tmp_path / "fleetd.heartbeat"
    write_self_heartbeat(path, NOW, 99, "starting")
    write_self_heartbeat(path, NOW + 5, 99, "supervising")
    beat = parse_heartbeat(path.read_bytes())
    assert isinstance(beat, Heartbeat)
    assert (beat.ts, beat.pid, beat.status) == (NOW + 5, 99, "supervising")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleetd.heartbeat"]


@pytest.fixture
def journald() -> Iterator[Journald]:
    with running_journald() as j:
        yield j


def test_report_to_journal_writes_one_crit_entry(journald: Journald, tmp_path: Path) -> None:
    result = check(tmp_path / "c.sock", tmp_path / "h", max_age=60, now_wall=NOW, timeout=1)
    report_to_journal(result, JournalWriter(journald.socket_path))
    report_to_journal(
        DeadmanResult(ok=True, problems=(), heartbeat_age=1.0, pid=1),
        JournalWriter(journald.socket_path),
    )
    [entry] = journald.wait_for("FLEETD_EVENT=fleetd_deadman")
    assert entry["PRIORITY"] == "2"
    assert entry["FLEETD_ALERT"] == "1"
    assert entry["MESSAGE"].startswith("fleetd deadman: fleetd is not running: heartbeat file")
    assert entry["FLEETD_PROBLEMS"] == "\n".join(result.problems)


def test_report_without_journal_goes_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = check(tmp_path / "c.sock", tmp_path / "h", max_age=60, now_wall=NOW, timeout=1)
    report_to_journal(result, JournalWriter(str(tmp_path / "no-journal")))
    report_to_journal(result, None)
    err = capsys.readouterr().err
    assert err.count("fleetd[crit] fleetd_deadman") == 2
