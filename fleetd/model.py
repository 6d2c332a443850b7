"""Frozen value types shared by the decision core and the I/O shell.

Nothing here does I/O or reads a clock. Times inside the core are monotonic
seconds (``float``) supplied by the caller; wall-clock times appear only in
observations that carry them from the outside world (heartbeat ``ts``, tmux
``pane_dead_time``) and in events, where the shell stamps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# The reason recorded when an agent is started because it was not running when
# fleetd first looked: a start, not a restart (history and metrics do not count it).
FIRST_START = "first start"
NOT_RESTART_CAUSES = ("operator", FIRST_START)


class State(StrEnum):
    """Agent lifecycle states; names follow supervisord where they fit."""

    UNKNOWN = "UNKNOWN"  # not yet observed, or its host is unreachable
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    HUNG = "HUNG"
    BACKOFF = "BACKOFF"
    STOPPED = "STOPPED"
    FATAL = "FATAL"
    PAUSED = "PAUSED"


# --- inputs to decide() ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaneAlive:
    """The agent's pane exists and its process is alive."""

    pid: int


@dataclass(frozen=True, slots=True)
class PaneDead:
    """The agent's pane exists but its process has exited (tmux remain-on-exit)."""

    pid: int | None
    exit_status: int | None
    signal: int | None
    died_wall: float | None = None  # when it died, if the observer knows


@dataclass(frozen=True, slots=True)
class PaneMissing:
    """No pane carries this agent's tag (window closed, tmux server gone).

    ``host_incident`` names the open host-wide incident that explains the loss
    (tmux server gone); the agent then records its death without its own alert.
    """

    host_incident: str | None = None


@dataclass(frozen=True, slots=True)
class Beat:
    """A valid heartbeat line set whose ``ts`` differs from the last one seen.

    ``at`` is the monotonic time the beat corresponds to, computed by the shell
    from the wall ``ts`` and clamped so that a future-dated beat counts as "now".
    """

    ts_wall: float
    at: float
    status: str | None = None
    busy: bool | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """Time has passed; re-check deadlines."""


@dataclass(frozen=True, slots=True)
class SpawnDone:
    pid: int | None


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class HostDown:
    reason: str


@dataclass(frozen=True, slots=True)
class Command:
    """An operator command; ``received`` is the monotonic time fleetd received it."""

    verb: str  # start | stop | restart | pause | resume | correct (drift correction)
    received: float
    uid: int | None = None
    reason: str = ""  # why, when fleetd itself asks (failover, drift correction)


Input = (
    PaneAlive | PaneDead | PaneMissing | Beat | Tick | SpawnDone | SpawnFailed | HostDown | Command
)


# --- outputs of decide() -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Emit:
    """Record an event (store, journal, followers)."""

    kind: str
    message: str
    alert: bool = False  # True only for the first alert of an incident
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CaptureForensics:
    """Save exit status, scrollback and last heartbeat BEFORE anything respawns."""

    reason: str
    exit_status: int | None = None
    signal: int | None = None


@dataclass(frozen=True, slots=True)
class Spawn:
    """Create the pane if missing and (re)start the agent's command in it."""

    reason: str


@dataclass(frozen=True, slots=True)
class Kill:
    """TERM the agent's process group, wait ``stop_timeout``, then KILL."""

    reason: str
    pid: int | None


Action = Emit | CaptureForensics | Spawn | Kill


@dataclass(frozen=True, slots=True)
class Ctx:
    """What the shell supplies with every decision: the clock and fresh entropy."""

    now: float
    rand: float = 0.5  # uniform in [0, 1); drives backoff jitter
    new_id: str = ""  # a fresh unique id, used if an incident opens
