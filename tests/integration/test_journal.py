"""JournalWriter and AlertSink against a real, private systemd-journald."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.alerts import AlertSink
from fleetd.journal import JournalWriter
from tests.journald import Journald, running_journald


@pytest.fixture
def journald() -> Iterator[Journald]:
    with running_journald() as j:
        yield j


def _event(**over: object) -> dict[str, object]:
    event: dict[str, object] = {
        "id": 17,
        "ts": 1_700_000_000.0,
        "kind": "agent_dead",
        "host": "local",
        "agent": "alpha",
        "state": "BACKOFF",
        "incident": "inc-alpha-1",
        "alert": True,
        "message": "agent alpha died (exit 137)",
        "data": {"exit_status": 137, "scrollback": "line one\nline two\n\nline four"},
    }
    event.update(over)
    return event


def test_fields_round_trip(journald: Journald) -> None:
    writer = JournalWriter(journald.socket_path)
    assert writer.send(
        {
            "MESSAGE": "hello from fleetd",
            "SYSLOG_IDENTIFIER": "fleetd",
            "PRIORITY": 5,
            "FLEETD_EVENT": "test_plain",
            "FLEETD_RAW": b"raw bytes",
            "_HIDDEN": "dropped, journald-trusted namespace",
        }
    )
    [entry] = journald.wait_for("FLEETD_EVENT=test_plain")
    assert entry["MESSAGE"] == "hello from fleetd"
    assert entry["PRIORITY"] == "5"
    assert entry["FLEETD_RAW"] == "raw bytes"
    assert "_HIDDEN" not in entry
    # journald added its trusted fields: the sender is this process.
    assert entry["_PID"] == str(os.getpid())
    assert writer.sent_datagram == 1


def test_alert_sink_event_with_multiline_scrollback(journald: Journald) -> None:
    sink = AlertSink(JournalWriter(journald.socket_path), fallback=io.StringIO())
    sink.emit(_event())
    [entry] = journald.wait_for("FLEETD_EVENT=agent_dead", "FLEETD_AGENT=alpha")
    assert entry["PRIORITY"] == "3"
    assert entry["MESSAGE"] == "agent alpha died (exit 137)"
    assert entry["FLEETD_HOST"] == "local"
    assert entry["FLEETD_STATE"] == "BACKOFF"
    assert entry["FLEETD_INCIDENT"] == "inc-alpha-1"
    assert entry["FLEETD_ALERT"] == "1"
    assert entry["FLEETD_EVENT_ID"] == "17"
    assert entry["FLEETD_EXIT_STATUS"] == "137"
    assert entry["FLEETD_SCROLLBACK"] == "line one\nline two\n\nline four"


def test_follow_up_event_of_open_incident_is_not_an_alert(journald: Journald) -> None:
    sink = AlertSink(JournalWriter(journald.socket_path), fallback=io.StringIO())
    sink.emit(_event(id=1))
    sink.emit(_event(id=2, alert=False, message="agent alpha died again"))
    entries = journald.wait_for("FLEETD_INCIDENT=inc-alpha-1", count=2)
    assert [e["PRIORITY"] for e in entries] == ["3", "4"]
    # `journalctl -p err` (PRIORITY 0..3) shows the incident once.
    assert [e["FLEETD_EVENT_ID"] for e in entries if int(e["PRIORITY"]) <= 3] == ["1"]


def test_oversized_entry_goes_through_memfd(journald: Journald) -> None:
    writer = JournalWriter(journald.socket_path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)
        sndbuf = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    finally:
        probe.close()
    # Bigger than any datagram the kernel lets this writer send: several MB.
    line = "0123456789abcdef" * 7 + "\n"
    scrollback = line * (sndbuf // len(line) + 20_000)
    assert len(scrollback) > sndbuf + 1_000_000
    assert writer.send(
        {
            "MESSAGE": "big",
            "SYSLOG_IDENTIFIER": "fleetd",
            "FLEETD_EVENT": "test_big",
            "FLEETD_SCROLLBACK": scrollback,
        }
    )
    assert writer.sent_memfd == 1
    assert writer.sent_datagram == 0
    [entry] = journald.wait_for("FLEETD_EVENT=test_big")
    assert len(entry["FLEETD_SCROLLBACK"]) == len(scrollback)
    assert entry["FLEETD_SCROLLBACK"] == scrollback


def test_missing_socket_returns_false_and_sink_falls_back(tmp_path: Path) -> None:
    writer = JournalWriter(str(tmp_path / "no-such-socket"))
    assert writer.send({"MESSAGE": "lost", "SYSLOG_IDENTIFIER": "fleetd"}) is False
    assert writer.failed == 1
    err = io.StringIO()
    AlertSink(writer, fallback=err).emit(_event())
    line = err.getvalue()
    assert line.count("\n") == 1
    assert line.startswith("fleetd[err] agent_dead ")
    assert "agent=alpha" in line
    assert "agent alpha died (exit 137)" in line


def test_refused_socket_returns_false(tmp_path: Path) -> None:
    # A socket file with nobody behind it, as after journald died.
    path = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()
    writer = JournalWriter(str(path))
    assert writer.send({"MESSAGE": "refused"}) is False


def test_full_socket_returns_false_without_blocking(tmp_path: Path) -> None:
    # A receiver that never reads: the queue fills, and send() must answer False at once.
    path = tmp_path / "full.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    try:
        writer = JournalWriter(str(path))
        results = [writer.send({"MESSAGE": "x" * 1000}) for _ in range(5000)]
        assert results[0] is True
        assert False in results  # EAGAIN -> False, not a hang
    finally:
        receiver.close()
