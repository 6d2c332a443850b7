"""Human durations: what parses, what is refused, and the short form for tables."""

from __future__ import annotations

import pytest

from fleetd.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("15s", 15.0),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("2d", 172800.0),
        ("1.5s", 1.5),
        ("0.25h", 900.0),
        ("1m500ms", 60.5),
        (" 15s ", 15.0),
        ("1h 30m", 5400.0),
        ("15", 15.0),
        ("2.5", 2.5),
        ("0", 0.0),
        ("0s", 0.0),
        (15, 15.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration(value: str | float, seconds: float) -> None:
    got = parse_duration(value)
    assert isinstance(got, float)
    assert got == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "s",
        "ms",
        "15x",
        "15 sec",
        "fifteen",
        "1h30",  # a trailing number without a unit
        "h1",
        "1.s",
        ".5s",
        "15s!",
        "1e3s",
        "0x10",
        "-5s",
        "1h-30m",
        "15s;rm",
        True,
        False,
    ],
)
def test_garbage_is_refused(value: str | bool) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.001, "-1", "-2.5"])
def test_negative_is_refused_with_reason(value: str | float) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["nan", "inf", "infinity", float("nan"), float("inf")])
def test_non_finite_is_refused(value: str | float) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.0s"),
        (0.4, "0.4s"),
        (9.94, "9.9s"),
        (10.0, "10s"),
        (59.9, "59s"),
        (60.0, "1m00s"),
        (185.0, "3m05s"),
        (3599.0, "59m59s"),
        (3600.0, "1h00m"),
        (7260.0, "2h01m"),
        (86399.0, "23h59m"),
        (86400.0, "1d00h"),
        (273600.0, "3d04h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_then_parse_stays_close() -> None:
    for seconds in (12.0, 185.0, 7260.0, 273600.0):
        assert parse_duration(format_duration(seconds)) == seconds
