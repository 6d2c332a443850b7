"""The heartbeat file protocol: parse and format. No I/O.

A heartbeat file holds one ``key=value`` per line::

    ts=2026-11-25T08:40:12.123456+00:00
    pid=4242
    status=working
    busy=1
    model=claude-sonnet
    provider=anthropic
    runtime=claude-code

``ts``, ``pid`` and ``status`` are required; ``model``, ``provider``, ``runtime``
and ``busy`` are optional; unknown keys are kept in ``extra`` and otherwise
ignored. A file that is missing, empty, half-written (no ``ts`` yet, a line cut
short) or unparsable yields a :class:`HeartbeatProblem` with a stable code, which
the shell treats as "nothing new", never as a death. Writers should replace the
file atomically (write a temporary file, then rename), as :func:`format_heartbeat`
users in this package do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

MAX_HEARTBEAT_BYTES = 4096
_BUSY_TRUE = {"1", "true", "yes"}
_BUSY_FALSE = {"0", "false", "no"}
BUSY_STATUSES = frozenset({"busy", "working"})
IDLE_STATUSES = frozenset({"idle"})


@dataclass(frozen=True, slots=True)
class Heartbeat:
    ts: float  # wall clock, seconds since the epoch
    pid: int
    status: str
    model: str | None = None
    provider: str | None = None
    runtime: str | None = None
    busy: bool | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_busy(self) -> bool | None:
        """Busy per ``busy=`` if present, else per ``status``; None if it does not say."""
        if self.busy is not None:
            return self.busy
        if self.status in BUSY_STATUSES:
            return True
        if self.status in IDLE_STATUSES:
            return False
        return None


@dataclass(frozen=True, slots=True)
class HeartbeatProblem:
    """Why a heartbeat file could not be used. ``code`` is stable."""

    code: str  # missing | empty | torn | invalid | too_large
    detail: str


def parse_ts(text: str) -> float:
    """ISO-8601 (``Z`` allowed; naive means UTC) or plain epoch seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def parse_heartbeat(data: bytes | None) -> Heartbeat | HeartbeatProblem:
    if data is None:
        return HeartbeatProblem("missing", "heartbeat file does not exist")
    if len(data) > MAX_HEARTBEAT_BYTES:
        return HeartbeatProblem("too_large", f"heartbeat file is over {MAX_HEARTBEAT_BYTES} bytes")
    if not data.strip():
        return HeartbeatProblem("empty", "heartbeat file is empty")
    text = data.decode("utf-8", errors="replace")
    if not text.endswith("\n"):
        # Writers end every line with a newline; a missing one means a write in progress.
        return HeartbeatProblem("torn", "last line is incomplete (file being written)")
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            return HeartbeatProblem("invalid", f"line without '=': {line[:60]!r}")
        values[key.strip()] = value.strip()
    missing = [k for k in ("ts", "pid", "status") if k not in values]
    if missing:
        return HeartbeatProblem("torn", f"missing {', '.join(missing)}")
    try:
        ts = parse_ts(values["ts"])
    except (ValueError, OverflowError):
        ts = math.nan
    if not math.isfinite(ts):
        return HeartbeatProblem("invalid", f"ts is not a time: {values['ts'][:60]!r}")
    try:
        pid = int(values["pid"])
    except ValueError:
        return HeartbeatProblem("invalid", f"pid is not a number: {values['pid'][:20]!r}")
    busy_raw = values.get("busy")
    busy: bool | None = None
    if busy_raw is not None:
        low = busy_raw.lower()
        busy = True if low in _BUSY_TRUE else False if low in _BUSY_FALSE else None
    known = {"ts", "pid", "status", "model", "provider", "runtime", "busy"}
    return Heartbeat(
        ts=ts,
        pid=pid,
        status=values["status"],
        model=values.get("model") or None,
        provider=values.get("provider") or None,
        runtime=values.get("runtime") or None,
        busy=busy,
        extra={k: v for k, v in values.items() if k not in known},
    )


def format_heartbeat(
    ts: float,
    pid: int,
    status: str,
    *,
    model: str | None = None,
    provider: str | None = None,
    runtime: str | None = None,
    busy: bool | None = None,
) -> str:
    lines = [
        f"ts={datetime.fromtimestamp(ts, UTC).isoformat()}",
        f"pid={pid}",
        f"status={status}",
    ]
    for key, value in (("model", model), ("provider", provider), ("runtime", runtime)):
        if value is not None:
            lines.append(f"{key}={value}")
    if busy is not None:
        lines.append(f"busy={1 if busy else 0}")
    return "\n".join(lines) + "\n"
