"""How fleetd events reach people: journald entries, and the structlog front.

Every event (a store row) becomes one journal entry with structured fields, so
on-call answers "what died, when, why" with ``journalctl`` matches instead of grep::

    journalctl SYSLOG_IDENTIFIER=fleetd FLEETD_EVENT=agent_dead
    journalctl SYSLOG_IDENTIFIER=fleetd -p err

``PRIORITY`` follows the event kind, with one rule on top: an event that belongs to
an incident that already alerted (its ``alert`` flag is False) is lowered from
err/crit to warning. journald therefore carries exactly one err/crit entry per
incident (the policy also escalates to FATAL with ``alert=True``), and
``journalctl -p err`` is the alert list, not a flood.

:class:`AlertSink` never raises and never waits on journald: if the journal is not
there (not running under systemd, socket full), the event goes to stderr as one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import structlog

from fleetd.journal import JournalWriter

# syslog(3) levels, as journald's PRIORITY field wants them.
CRIT, ERR, WARNING, NOTICE, INFO = 2, 3, 4, 5, 6
PRIORITY_NAMES = {CRIT: "crit", ERR: "err", WARNING: "warning", NOTICE: "notice", INFO: "info"}

PRIORITY: dict[str, int] = {
    **dict.fromkeys(
        ("agent_fatal", "host_unreachable", "fleetd_deadman", "providers_all_down"), CRIT
    ),
    **dict.fromkeys(
        (
            "agent_dead",
            "agent_hung",
            "agent_spawn_failed",
            "host_key_rejected",
            "provider_down",
            "drift_detected",
            "host_health_bad",
            "host_tmux_gone",
            "host_fleetd_down",
            "reload_failed",
        ),
        ERR,
    ),
    **dict.fromkeys(
        (
            "agent_recovered",
            "host_recovered",
            "provider_up",
            "drift_cleared",
            "host_health_ok",
            "incident_closed",
            "providers_all_down_cleared",
        ),
        NOTICE,
    ),
    **dict.fromkeys(
        ("agent_backoff", "failover", "failback", "drift_correction_skipped"), WARNING
    ),
}

IDENTIFIER = "fleetd"
_NOT_FIELD_CHAR = re.compile(r"[^A-Z0-9]")


def priority(kind: str, alert: bool) -> int:
    """The syslog priority of an event of ``kind``; err/crit only when it alerts."""
    level = PRIORITY.get(kind, INFO)
    if level <= ERR and not alert:
        return WARNING  # part of an incident that already alerted once
    return level


def data_field_name(key: str) -> str:
    """``exit_status`` -> ``FLEETD_EXIT_STATUS``; capped at journald's 64 characters."""
    return ("FLEETD_" + _NOT_FIELD_CHAR.sub("_", key.upper()))[:64]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def journal_fields(event: Mapping[str, Any]) -> dict[str, str]:
    """The journal entry for one event (the dict form of a store row).

    ``data`` keys become ``FLEETD_<KEY>`` fields (values may span lines, e.g. the
    scrollback); the fixed fields win over a data key that maps to the same name.
    None values are left out.
    """
    kind = str(event.get("kind") or "event")
    alert = bool(event.get("alert"))
    fields: dict[str, str] = {}
    data = event.get("data") or {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            if value is not None:
                fields[data_field_name(str(key))] = _text(value)
    fixed: dict[str, Any] = {
        "MESSAGE": event.get("message") or kind,
        "PRIORITY": priority(kind, alert),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "FLEETD_EVENT": kind,
        "FLEETD_AGENT": event.get("agent"),
        "FLEETD_HOST": event.get("host"),
        "FLEETD_STATE": event.get("state"),
        "FLEETD_INCIDENT": event.get("incident"),
        "FLEETD_ALERT": alert,
        "FLEETD_EVENT_ID": event.get("id"),
    }
    for name, value in fixed.items():
        if value is not None:
            fields[name] = _text(value)
    return fields


def summary_line(fields: Mapping[str, str]) -> str:
    """One stderr line for an entry that journald could not take."""
    level = PRIORITY_NAMES.get(int(fields.get("PRIORITY", INFO)), "info")
    context = " ".join(
        f"{name.removeprefix('FLEETD_').lower()}={fields[name]}"
        for name in ("FLEETD_HOST", "FLEETD_AGENT", "FLEETD_STATE", "FLEETD_INCIDENT")
        if name in fields
    )
    message = " ".join(fields.get("MESSAGE", "").splitlines())
    return f"fleetd[{level}] {fields.get('FLEETD_EVENT', '')} {context}: {message}".rstrip()


class AlertSink:
    """Sends events to journald, or as one line to ``fallback`` when it cannot."""

    def __init__(self, writer: JournalWriter | None, fallback: TextIO = sys.stderr) -> None:
        self.writer = writer
        self.fallback = fallback

    def emit(self, event: Mapping[str, Any]) -> None:
        try:
            fields = journal_fields(event)
            if self.writer is not None and self.writer.send(fields):
                return
            self.fallback.write(summary_line(fields) + "\n")
            self.fallback.flush()
        except Exception:
            # An alert path must never take the daemon down, not even when stderr is gone.
            with contextlib.suppress(Exception):
                structlog.get_logger("fleetd.alerts").exception(
                    "alert.emit.failed", kind=event.get("kind")
                )


def configure_logging(
    fmt: Literal["auto", "console", "json"],
    stream: TextIO = sys.stderr,
    level: int = logging.INFO,
) -> None:
    """structlog for fleetd: a console renderer on a TTY (or ``fmt="console"``), else
    one JSON object per line (what journald and log shippers want).

    Event names are dotted, subject first (``agent.respawn.failed``), with context as
    key/value pairs bound once (``agent=``, ``host=``), never formatted into the name.
    """
    isatty = False
    with contextlib.suppress(AttributeError, ValueError):  # closed or odd streams
        isatty = stream.isatty()
    console = fmt == "console" or (fmt == "auto" and isatty)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: list[structlog.typing.Processor]
    if console:
        renderer = [structlog.dev.ConsoleRenderer(colors=isatty)]
    else:
        renderer = [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(sort_keys=False, default=str),
        ]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
