"""The deadman check behind ``fleetctl deadman``: is fleetd itself alive?

systemd's watchdog restarts a wedged fleetd, but nothing inside fleetd can report
that fleetd is gone (crash loop, unit stopped, host rebooted without it). This
check runs outside fleetd, from a timer, cron or a peer host, and looks at three
independent signs:

* the self-heartbeat file (heartbeat protocol, see :mod:`fleetd.heartbeat`) that the
  supervision loop rewrites every few seconds: present, parsable, young enough;
* the pid in it: still a live process (not gone, not a zombie);
* the control socket: answers a ``ping`` within a timeout (a live pid with a stuck
  event loop writes no heartbeat and answers nothing).

It runs in a short-lived CLI process, so it uses plain blocking sockets with
timeouts and imports no event loop. Problems are written for an operator paged at
3 AM: what is wrong, which file or socket, and the numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fleetd.alerts import AlertSink
from fleetd.heartbeat import (
    MAX_HEARTBEAT_BYTES,
    Heartbeat,
    format_heartbeat,
    parse_heartbeat,
)
from fleetd.journal import JournalWriter

MAX_REPLY_BYTES = 1024 * 1024
PING = b'{"v":1,"id":1,"cmd":"ping","args":{}}\n'


@dataclass(frozen=True, slots=True)
class DeadmanResult:
    ok: bool
    problems: tuple[str, ...]
    heartbeat_age: float | None  # seconds, None if there is no usable heartbeat
    pid: int | None  # fleetd's pid per the heartbeat file

    def summary(self) -> str:
        if self.ok:
            age = "" if self.heartbeat_age is None else f", heartbeat {self.heartbeat_age:.0f}s old"
            return f"fleetd is alive (pid {self.pid}{age})"
        return "; ".join(self.problems)


def check(
    socket_path: Path,
    heartbeat_path: Path,
    max_age: float,
    now_wall: float,
    timeout: float = 3.0,
) -> DeadmanResult:
    """Run every check (one failing does not hide the others) and collect problems."""
    problems: list[str] = []
    beat, age, problem = _read_heartbeat(heartbeat_path, max_age, now_wall)
    if problem:
        problems.append(problem)
    pid = beat.pid if beat is not None else None
    if pid is not None:
        dead = _pid_problem(pid)
        if dead:
            problems.append(dead)
    ping_problem = ping(socket_path, timeout)
    if ping_problem:
        problems.append(ping_problem)
    return DeadmanResult(ok=not problems, problems=tuple(problems), heartbeat_age=age, pid=pid)


def _read_heartbeat(
    path: Path, max_age: float, now_wall: float
) -> tuple[Heartbeat | None, float | None, str | None]:
    try:
        with path.open("rb") as f:
            data: bytes | None = f.read(MAX_HEARTBEAT_BYTES + 1)
    except FileNotFoundError:
        data = None
    except OSError as exc:
        return None, None, f"cannot read fleetd heartbeat file {path}: {exc.strerror or exc}"
    parsed = parse_heartbeat(data)
    if not isinstance(parsed, Heartbeat):
        if parsed.code == "missing":
            why = f"heartbeat file {path} does not exist"
        else:
            why = f"heartbeat file {path} is unusable ({parsed.code}: {parsed.detail})"
        return None, None, f"fleetd is not running: {why}"
    age = now_wall - parsed.ts
    if age > max_age:
        return (
            parsed,
            age,
            f"fleetd is not running or is stuck: heartbeat file {path} is {age:.0f}s old "
            f"(limit {max_age:.0f}s, last status {parsed.status!r}, pid {parsed.pid})",
        )
    if age < -max_age:
        # Written "in the future": the clock jumped; the file proves nothing.
        return (
            parsed,
            age,
            f"fleetd heartbeat file {path} is dated {-age:.0f}s in the future "
            "(system clock changed?)",
        )
    return parsed, age, None


def _pid_problem(pid: int) -> str | None:
    if pid <= 0:
        return f"fleetd heartbeat names an impossible pid {pid}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"fleetd is not running: pid {pid} from its heartbeat file does not exist"
    except PermissionError:
        pass  # it exists, under another uid
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        # state is the field after the ")" that closes the command name
        state = stat.rpartition(")")[2].split()[0]
        if state in ("Z", "X"):
            return f"fleetd is not running: pid {pid} from its heartbeat file is a zombie"
    return None


def ping(socket_path: Path, timeout: float) -> str | None:
    """Ping fleetd's control socket; None if it answered ok within ``timeout``."""
    deadline = time.monotonic() + timeout
    where = f"control socket {socket_path}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(PING)
            reply = _read_line(sock, deadline)
    except FileNotFoundError:
        return f"fleetd is not running: {where} does not exist"
    except ConnectionRefusedError:
        return f"fleetd is not running: nothing listens on {where} (stale socket file)"
    except PermissionError:
        return (
            f"cannot check fleetd: permission denied on {where} "
            "(run as root or as a member of the socket's group)"
        )
    except TimeoutError:
        return f"fleetd is stuck: {where} did not answer a ping within {timeout:g}s"
    except OSError as exc:
        return f"fleetd did not answer a ping on {where}: {exc.strerror or exc}"
    if reply is None:
        return f"fleetd closed {where} without answering the ping"
    try:
        msg = json.loads(reply)
    except ValueError:
        return f"fleetd answered the ping on {where} with something that is not JSON"
    if not isinstance(msg, dict) or msg.get("v") != 1 or msg.get("id") != 1:
        return f"fleetd answered the ping on {where} with an unexpected reply: {reply[:200]!r}"
    if msg.get("ok") is not True:
        error = msg.get("error")
        detail = error if not isinstance(error, dict) else error.get("code", error)
        return f"fleetd refused the ping on {where}: {detail}"
    return None


def _read_line(sock: socket.socket, deadline: float) -> bytes | None:
    buf = bytearray()
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > MAX_REPLY_BYTES:
            raise OSError("reply line too long")
    return bytes(buf.partition(b"\n")[0])


def report_to_journal(result: DeadmanResult, writer: JournalWriter | None) -> None:
    """Write one crit ``FLEETD_EVENT=fleetd_deadman`` entry if the check failed.

    Falls back to a stderr line if journald cannot take it (cron then mails it).
    """
    if result.ok:
        return
    event = {
        "id": None,
        "ts": time.time(),
        "kind": "fleetd_deadman",
        "host": socket.gethostname(),
        "agent": None,
        "state": None,
        "incident": None,
        "alert": True,  # the deadman has no incident bookkeeping: always page
        "message": "fleetd deadman: " + "; ".join(result.problems),
        "data": {
            "problems": "\n".join(result.problems),
            "heartbeat_age": None if result.heartbeat_age is None else round(result.heartbeat_age),
            "pid": result.pid,
        },
    }
    AlertSink(writer, fallback=sys.stderr).emit(event)


def write_self_heartbeat(path: Path, now_wall: float, pid: int, status: str) -> None:
    """Replace ``path`` atomically with fleetd's own heartbeat (tmp file + rename).

    Readers see either the old or the new file, never a torn one. No fsync: the file
    lives in the runtime directory (tmpfs) and only has to outlive fleetd, not a reboot.
    """
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # readable by `fleetctl deadman` whatever the umask
            f.write(format_heartbeat(now_wall, pid, status))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
