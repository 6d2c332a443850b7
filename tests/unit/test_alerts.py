"""Event -> journal fields, priorities, the native encoding, and the logging front."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import pytest
import structlog

from fleetd.alerts import (
    PRIORITY,
    AlertSink,
    configure_logging,
    data_field_name,
    journal_fields,
    priority,
    summary_line,
)
from fleetd.journal import JournalWriter, encode_entry, valid_field_name


def _event(**over: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": 3,
        "ts": 1.0,
        "kind": "agent_dead",
        "host": "vps1",
        "agent": "alpha",
        "state": "BACKOFF",
        "incident": "inc-1",
        "alert": True,
        "message": "agent alpha died",
        "data": {},
    }
    event.update(over)
    return event


@pytest.mark.parametrize(
    ("kind", "alert", "expected"),
    [
        ("agent_fatal", True, 2),
        ("host_unreachable", True, 2),
        ("fleetd_deadman", True, 2),
        ("providers_all_down", True, 2),
        ("agent_dead", True, 3),
        ("agent_hung", True, 3),
        ("agent_spawn_failed", True, 3),
        ("host_key_rejected", True, 3),
        ("provider_down", True, 3),
        ("drift_detected", True, 3),
        ("host_health_bad", True, 3),
        ("agent_recovered", False, 5),
        ("incident_closed", False, 5),
        ("provider_up", True, 5),
        ("agent_backoff", False, 4),
        ("failover", False, 4),
        ("failback", True, 4),
        ("agent_started", False, 6),
        ("something_new", True, 6),
        # Already-open incident: err/crit lowered to warning, so one alert per incident.
        ("agent_dead", False, 4),
        ("agent_fatal", False, 4),
        ("host_unreachable", False, 4),
    ],
)
def test_priority(kind: str, alert: bool, expected: int) -> None:
    assert priority(kind, alert) == expected


ALERTING_KINDS = (
    "agent_dead",
    "agent_hung",
    "agent_fatal",
    "agent_spawn_failed",
    "host_unreachable",
    "host_key_rejected",
    "host_tmux_gone",
    "host_health_bad",
    "host_fleetd_down",
    "provider_down",
    "providers_all_down",
    "drift_detected",
    "fleetd_deadman",
    "reload_failed",
)
RECOVERY_KINDS = (
    "agent_recovered",
    "host_recovered",
    "host_health_ok",
    "provider_up",
    "providers_all_down_cleared",
    "drift_cleared",
)


def test_every_alerting_kind_pages_and_every_recovery_is_a_notice() -> None:
    # Each event kind fleetd raises with alert=True must reach `journalctl -p err`.
    for kind in ALERTING_KINDS:
        assert priority(kind, True) <= 3, kind
    for kind in RECOVERY_KINDS:
        assert PRIORITY.get(kind) == 5, kind


def test_journal_fields() -> None:
    fields = journal_fields(
        _event(
            data={
                "exit_status": 137,
                "scrollback": "a\nb",
                "signal": None,
                "last-heartbeat.ts": 12.5,
                "busy": True,
                "chain": ["anthropic", "openai"],
                "agent": "spoofed",  # cannot override the fixed field
            }
        )
    )
    assert fields == {
        "MESSAGE": "agent alpha died",
        "PRIORITY": "3",
        "SYSLOG_IDENTIFIER": "fleetd",
        "FLEETD_EVENT": "agent_dead",
        "FLEETD_AGENT": "alpha",
        "FLEETD_HOST": "vps1",
        "FLEETD_STATE": "BACKOFF",
        "FLEETD_INCIDENT": "inc-1",
        "FLEETD_ALERT": "1",
        "FLEETD_EVENT_ID": "3",
        "FLEETD_EXIT_STATUS": "137",
        "FLEETD_SCROLLBACK": "a\nb",
        "FLEETD_LAST_HEARTBEAT_TS": "12.5",
        "FLEETD_BUSY": "1",
        "FLEETD_CHAIN": '["anthropic", "openai"]',
    }
    assert all(valid_field_name(name) for name in fields)


def test_journal_fields_skip_none() -> None:
    fields = journal_fields(_event(agent=None, incident=None, state=None, id=None, alert=False))
    assert "FLEETD_AGENT" not in fields
    assert "FLEETD_INCIDENT" not in fields
    assert "FLEETD_EVENT_ID" not in fields
    assert fields["FLEETD_ALERT"] == "0"
    assert fields["PRIORITY"] == "4"


def test_data_field_name() -> None:
    assert data_field_name("exit_status") == "FLEETD_EXIT_STATUS"
    assert data_field_name("pane.id") == "FLEETD_PANE_ID"
    assert len(data_field_name("x" * 100)) == 64


def test_encode_entry_plain_and_binary() -> None:
    payload = encode_entry({"MESSAGE": "hi", "PRIORITY": 3, "FLEETD_SCROLLBACK": "a\nb"})
    assert payload == (
        b"MESSAGE=hi\nPRIORITY=3\nFLEETD_SCROLLBACK\n" + struct.pack("<Q", 3) + b"a\nb\n"
    )


@pytest.mark.parametrize("name", ["_PID", "lower", "9LIVES", "WITH-DASH", "X" * 65, ""])
def test_invalid_field_names(name: str) -> None:
    assert not valid_field_name(name)
    with pytest.raises(ValueError, match="invalid journal field name"):
        encode_entry({name: "x"})


def test_summary_line_is_one_line() -> None:
    line = summary_line(journal_fields(_event(message="two\nlines")))
    assert line == (
        "fleetd[err] agent_dead host=vps1 agent=alpha state=BACKOFF incident=inc-1: two lines"
    )


def test_alert_sink_without_writer_uses_fallback() -> None:
    out = io.StringIO()
    AlertSink(None, fallback=out).emit(_event(kind="agent_fatal", message="gave up"))
    assert out.getvalue().startswith("fleetd[crit] agent_fatal ")


def test_alert_sink_never_raises() -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    sink = AlertSink(JournalWriter("/nonexistent/socket"), fallback=Broken())
    sink.emit(_event())
    sink.emit({"kind": object(), "data": "not a mapping"})


def test_configure_logging_json_on_a_pipe() -> None:
    stream = io.StringIO()
    configure_logging("auto", stream)
    try:
        structlog.get_logger().info("agent.respawn.failed", agent="alpha")
        structlog.get_logger().debug("hidden.below.info")
    finally:
        structlog.reset_defaults()
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "agent.respawn.failed"
    assert record["agent"] == "alpha"
    assert record["level"] == "info"
    assert "timestamp" in record


def test_configure_logging_console_when_asked() -> None:
    stream = io.StringIO()
    configure_logging("console", stream)
    try:
        structlog.get_logger().warning("host.ssh.reconnect", host="vps1")
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "host.ssh.reconnect" in text
    assert "host=vps1" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_configure_logging_console_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    configure_logging("auto", stream)
    try:
        structlog.get_logger().info("fleetd.started")
    finally:
        structlog.reset_defaults()
    assert not stream.getvalue().lstrip().startswith("{")
