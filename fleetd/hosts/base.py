"""The ``Host`` interface: everything fleetd does to a machine goes through it.

Two implementations: :mod:`fleetd.hosts.local` (this machine, subprocesses and
psutil) and :mod:`fleetd.hosts.ssh` (asyncssh). The supervision loop, probes and
executor are written against this protocol only, so every probe and action works
on both. ``observe`` is the per-cycle batch: one call, one round trip, whatever
the number of agents on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from fleetd.tmux import PaneList


@dataclass(frozen=True, slots=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True, slots=True)
class HostHealth:
    disk_free_pct: float
    mem_available_pct: float
    load1: float
    cpus: int

    @property
    def load_per_cpu(self) -> float:
        return self.load1 / max(1, self.cpus)


@dataclass(frozen=True, slots=True)
class ObserveRequest:
    """What one observation cycle needs from a host."""

    sockets: tuple[str, ...]
    files: tuple[str, ...]
    health_path: str | None = "/"


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    panes: dict[str, PaneList]  # by tmux socket name
    files: dict[str, bytes | None]  # None: the file does not exist / cannot be read
    health: HostHealth | None
    wall: float  # the host's own wall clock when it answered
    round_trips: int = 1
    errors: tuple[str, ...] = field(default_factory=tuple)


@runtime_checkable
class Host(Protocol):
    name: str

    async def run(
        self, argv: Sequence[str], *, timeout: float = 10.0, stdin: bytes | None = None
    ) -> RunResult:
        """Run ``argv`` (never through a shell). Raises HostUnreachable / CommandTimeout."""
        ...

    async def read_files(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        """Read several small files in one go; a missing file maps to None."""
        ...

    async def observe(self, request: ObserveRequest) -> HostSnapshot:
        """tmux panes, files and health in one round trip."""
        ...

    async def signal_group(self, pid: int, signum: int) -> bool:
        """Send ``signum`` to the process group led by ``pid``; False if it is gone."""
        ...

    async def alive(self, pid: int) -> bool:
        """True if ``pid`` exists and is not a zombie."""
        ...

    def expand_path(self, path: str) -> str:
        """Expand a leading ``~`` to the home directory on that host."""
        ...

    async def close(self) -> None: ...
