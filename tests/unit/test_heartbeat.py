"""The heartbeat file protocol: the seed format, every way a file can be unusable
(with its stable code), time formats, busy/idle, and format/parse round trips."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from fleetd.heartbeat import (
    MAX_HEARTBEAT_BYTES,
    Heartbeat,
    HeartbeatProblem,
    format_heartbeat,
    parse_heartbeat,
    parse_ts,
)

TS = datetime(2026, 11, 25, 8, 40, 12, 123456, tzinfo=UTC).timestamp()

SEED = b"""ts=2026-11-25T08:40:12.123456+00:00
pid=4242
status=working
busy=1
model=claude-sonnet
provider=anthropic
runtime=claude-code
"""


def ok(data: bytes) -> Heartbeat:
    got = parse_heartbeat(data)
    assert isinstance(got, Heartbeat), got
    return got


def problem(data: bytes | None) -> str:
    got = parse_heartbeat(data)
    assert isinstance(got, HeartbeatProblem), got
    assert got.detail
    return got.code


def test_seed_format() -> None:
    hb = ok(SEED)
    assert hb.ts == pytest.approx(TS, abs=1e-6)
    assert hb.pid == 4242
    assert hb.status == "working"
    assert hb.busy is True
    assert (hb.model, hb.provider, hb.runtime) == ("claude-sonnet", "anthropic", "claude-code")
    assert hb.extra == {}


def test_required_keys_only_and_optional_absent() -> None:
    hb = ok(b"ts=1764060012\npid=1\nstatus=idle\n")
    assert (hb.model, hb.provider, hb.runtime, hb.busy) == (None, None, None, None)
    assert hb.ts == 1764060012.0


def test_unknown_keys_go_to_extra_and_noise_is_tolerated() -> None:
    data = (
        b"# written by agent\n\nts=1764060012.5\n pid = 77 \nstatus=idle\n"
        b"model=\ntask=fix-42\nx=a=b\n"
    )
    hb = ok(data)
    assert hb.pid == 77
    assert hb.model is None  # empty optional value means absent
    assert hb.extra == {"task": "fix-42", "x": "a=b"}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (None, "missing"),
        (b"", "empty"),
        (b"   \n\t\n", "empty"),
        (b"ts=1764060012\npid=1\nstatus=idle", "torn"),  # no trailing newline: mid-write
        (b"ts=1764060012\npid=1\nsta", "torn"),
        (b"pid=1\nstatus=idle\n", "torn"),  # no ts yet
        (b"ts=1764060012\nstatus=idle\n", "torn"),
        (b"ts=1764060012\npid=1\n", "torn"),
        (b"ts=yesterday\npid=1\nstatus=idle\n", "invalid"),
        (b"ts=2026-13-45T99:00:00Z\npid=1\nstatus=idle\n", "invalid"),
        (b"ts=\npid=1\nstatus=idle\n", "invalid"),
        (b"ts=1764060012\npid=abc\nstatus=idle\n", "invalid"),
        (b"ts=1764060012\npid=1.5\nstatus=idle\n", "invalid"),
        (b"ts=1764060012\npid=1\nstatus=idle\ngarbage line\n", "invalid"),
        (
            b"ts=1764060012\npid=1\nstatus=idle\n" + b"x=" + b"y" * MAX_HEARTBEAT_BYTES + b"\n",
            "too_large",
        ),
    ],
)
def test_unusable_files_have_stable_codes(data: bytes | None, code: str) -> None:
    assert problem(data) == code


def test_size_limit_is_inclusive() -> None:
    head = b"ts=1764060012\npid=1\nstatus=idle\nx="
    fits = head + b"y" * (MAX_HEARTBEAT_BYTES - len(head) - 1) + b"\n"
    assert len(fits) == MAX_HEARTBEAT_BYTES
    ok(fits)
    assert problem(fits + b"\n") == "too_large"


@pytest.mark.parametrize("ts", [b"nan", b"inf", b"-inf"])
def test_non_finite_ts_is_invalid(ts: bytes) -> None:
    assert problem(b"ts=" + ts + b"\npid=1\nstatus=idle\n") == "invalid"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T08:40:12Z", datetime(2026, 11, 25, 8, 40, 12, tzinfo=UTC).timestamp()),
        ("2026-11-25T08:40:12z", datetime(2026, 11, 25, 8, 40, 12, tzinfo=UTC).timestamp()),
        ("2026-11-25T08:40:12.123456Z", TS),
        ("2026-11-25T09:40:12.123456+01:00", TS),
        ("2026-11-25T03:10:12.123456-05:30", TS),
        ("2026-11-25T08:40:12.123456", TS),  # naive means UTC
        ("2026-11-25 08:40:12.123456", TS),
        ("1764060012.5", 1764060012.5),
        ("1764060012", 1764060012.0),
        (" 1764060012 ", 1764060012.0),
    ],
)
def test_ts_formats(text: str, expected: float) -> None:
    assert parse_ts(text) == pytest.approx(expected, abs=1e-6)


def test_naive_ts_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    # A POSIX TZ string needs no tzdata: local time is UTC+05:30 here.
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    try:
        assert parse_ts("2026-11-25T08:40:12.123456") == pytest.approx(TS, abs=1e-6)
        assert ok(b"ts=2026-11-25T08:40:12.123456\npid=1\nstatus=idle\n").ts == pytest.approx(
            TS, abs=1e-6
        )
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("busy", "status", "expected"),
    [
        ("1", "idle", True),  # busy= wins over status
        ("0", "working", False),
        ("true", "idle", True),
        ("false", "busy", False),
        ("TRUE", "x", True),
        ("yes", "x", True),
        ("no", "x", False),
        (None, "busy", True),
        (None, "working", True),
        (None, "idle", False),
        (None, "provider_error", None),
        ("maybe", "idle", False),  # an unreadable busy= falls back to status
        ("maybe", "starting", None),
    ],
)
def test_busy(busy: str | None, status: str, expected: bool | None) -> None:
    text = f"ts=1764060012\npid=1\nstatus={status}\n"
    if busy is not None:
        text += f"busy={busy}\n"
    assert ok(text.encode()).is_busy is expected


@pytest.mark.parametrize("busy", [True, False, None])
def test_format_heartbeat_round_trips(busy: bool | None) -> None:
    text = format_heartbeat(
        TS, 4242, "working", model="m-1", provider="openrouter", runtime="pi", busy=busy
    )
    assert text.endswith("\n")
    hb = ok(text.encode())
    assert hb.ts == pytest.approx(TS, abs=1e-6)
    assert (hb.pid, hb.status, hb.model, hb.provider, hb.runtime, hb.busy) == (
        4242,
        "working",
        "m-1",
        "openrouter",
        "pi",
        busy,
    )
    assert hb.extra == {}


def test_format_heartbeat_minimal() -> None:
    text = format_heartbeat(1764060012.0, 1, "idle")
    assert text == "ts=2025-11-25T08:40:12+00:00\npid=1\nstatus=idle\n"
    hb = ok(text.encode())
    assert (hb.ts, hb.model, hb.busy) == (1764060012.0, None, None)
