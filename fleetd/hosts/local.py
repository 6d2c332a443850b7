"""The local host: subprocesses for tmux, direct file reads, psutil for health,
and pidfd for seeing an agent die the moment it dies.

Agents are children of the tmux server, not of fleetd, so fleetd cannot wait()
for them; a pidfd (Linux 5.3+) becomes readable when any process exits, which
the asyncio loop watches with ``add_reader``. Where pidfd is unavailable the
polling cycle still notices the death, only later.
"""

from __future__ import annotations

import asyncio
import os
import signal as _signal
import time
from collections.abc import Callable, Sequence

import anyio
import psutil

from fleetd.errors import CommandFailed, CommandTimeout
from fleetd.heartbeat import MAX_HEARTBEAT_BYTES
from fleetd.hosts.base import HostHealth, HostSnapshot, ObserveRequest, RunResult
from fleetd.tmux import PaneList, is_no_server, list_panes, parse_panes


def read_small_file(path: str, limit: int = MAX_HEARTBEAT_BYTES + 1) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError):
        return None


def local_health(path: str) -> HostHealth:
    disk = psutil.disk_usage(path)
    mem = psutil.virtual_memory()
    return HostHealth(
        disk_free_pct=round(100.0 * disk.free / disk.total, 2) if disk.total else 0.0,
        mem_available_pct=round(100.0 * mem.available / mem.total, 2) if mem.total else 0.0,
        load1=os.getloadavg()[0],
        cpus=psutil.cpu_count() or 1,
    )


def zombie_status(pid: int) -> tuple[int | None, int | None] | None:
    """(exit status, signal) of a process that has exited but is not reaped yet.

    tmux sometimes reaps a pane's process long after it exited (its pane then
    shows dead with no status); while the process is a zombie, the kernel still
    holds its wait status in /proc/PID/stat (field 52, Linux 3.5+). None if the
    process is still running, already reaped, or the field is unreadable.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    if len(fields) < 50 or fields[0] != "Z":
        return None
    try:
        code = int(fields[49])
    except ValueError:
        return None
    if code & 0x7F:
        return None, code & 0x7F
    return (code >> 8) & 0xFF, None


class ExitWatcher:
    """Calls ``on_exit(pid)`` from the event loop when a watched pid exits."""

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit
        self._fds: dict[int, int] = {}
        self._loop = asyncio.get_running_loop()

    def watch(self, pid: int) -> bool:
        if pid in self._fds:
            return True
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            return False
        self._fds[pid] = fd
        self._loop.add_reader(fd, self._fired, pid)
        return True

    def _fired(self, pid: int) -> None:
        self.unwatch(pid)
        self._on_exit(pid)

    def unwatch(self, pid: int) -> None:
        fd = self._fds.pop(pid, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        for pid in list(self._fds):
            self.unwatch(pid)

    @property
    def watched(self) -> int:
        return len(self._fds)


# fleetd's environment minus what belongs to fleetd alone: a tmux server started by
# fleetd hands its environment to every agent, and an agent must never be able to
# ping fleetd's watchdog or pose as fleetd's main process.
_PRIVATE = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
CHILD_ENV = {k: v for k, v in os.environ.items() if k not in _PRIVATE}


class LocalHost:
    name: str

    def __init__(self, name: str = "local") -> None:
        self.name = name
        self.round_trips = 0

    async def run(
        self, argv: Sequence[str], *, timeout: float = 10.0, stdin: bytes | None = None
    ) -> RunResult:
        try:
            with anyio.fail_after(timeout):
                proc = await anyio.run_process(
                    list(argv), input=stdin, check=False, env=CHILD_ENV
                )
        except TimeoutError:
            raise CommandTimeout(
                f"{argv[0]} did not finish within {timeout:g}s", argv=list(argv)
            ) from None
        except OSError as exc:
            raise CommandFailed(f"cannot run {argv[0]}: {exc}", argv=list(argv)) from None
        return RunResult(
            tuple(argv),
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )

    async def read_files(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        return {p: read_small_file(self.expand_path(p)) for p in paths}

    async def list_panes(self, socket: str) -> PaneList:
        res = await self.run(list_panes(socket))
        if not res.ok:
            if is_no_server(res.stderr):
                return PaneList(server_running=False, panes={})
            raise CommandFailed(f"tmux list-panes failed: {res.stderr.strip()}")
        return parse_panes(res.stdout)

    async def observe(self, request: ObserveRequest) -> HostSnapshot:
        self.round_trips += 1
        panes: dict[str, PaneList] = {}
        errors: list[str] = []
        for sock in request.sockets:
            try:
                panes[sock] = await self.list_panes(sock)
            except (CommandFailed, CommandTimeout) as exc:
                errors.append(exc.message)
        files = await self.read_files(request.files)
        health = local_health(request.health_path) if request.health_path else None
        return HostSnapshot(
            panes=panes, files=files, health=health, wall=time.time(), errors=tuple(errors)
        )

    async def signal_group(self, pid: int, signum: int) -> bool:
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:
            # Not a group leader we may signal: fall back to the process itself.
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                return False
        return True

    async def alive(self, pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def expand_path(self, path: str) -> str:
        return os.path.expanduser(path)

    async def close(self) -> None:
        return None


SIGTERM = _signal.SIGTERM
SIGKILL = _signal.SIGKILL
