"""The report renders every part of the history, and its JSON keys stay stable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.config import Targets
from fleetd.errors import UnknownAgent
from fleetd.history import DAY, FleetHistory, compute
from fleetd.report import (
    SPARK_NO_DATA,
    duration,
    render_markdown,
    sparkline,
    to_json,
    uptime_summary,
)
from fleetd.store import Store
from tests.unit.test_history import D0, WINDOW, build


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "events.sqlite")
    try:
        build(s)
        s.add_forensics(
            D0 + 71 * 3600 - 30,
            "h1",
            "b",
            "fatal",
            exit_status=2,
            signal=None,
            pid=7,
            scrollback="ok\n\x1b[31mred | pipe\x1b[0m\nbell\x07 end\n",
            heartbeat=None,
        )
        yield s
    finally:
        s.close()


@pytest.fixture
def hist(store: Store) -> FleetHistory:
    return compute(store.connection, *WINDOW, Targets(), agents=["a", "b", "ghost"])


def test_markdown_has_snapshot_agents_incidents_verdict(hist: FleetHistory) -> None:
    md = render_markdown(hist)
    assert "## Resource snapshot" in md
    assert "| Fleet operational now | 50.00 % (1/2 agents RUNNING) | >= 95 % | NOT MET |" in md
    assert "| Days at target | 3/3 days (100.0 %) | >= 90 % of days | MET |" in md
    assert "| Capacity utilization |" in md
    assert "## Agents" in md
    row_a = next(line for line in md.splitlines() if line.startswith("| a |"))
    assert "| 3 | 1 | 0 | 1h15m |" in row_a  # restarts, hangs, failovers, longest outage
    assert row_a.rstrip().endswith("`▇▇▇` |")
    row_ghost = next(line for line in md.splitlines() if line.startswith("| ghost |"))
    assert f"`{SPARK_NO_DATA * 3}`" in row_ghost
    assert "## Worst incidents" in md
    assert "**a-1**" in md and "signal 9" in md
    assert "   l4" in md
    assert "exit status 2" in md
    assert "\x1b" not in md and "\x07" not in md  # scrollback escapes stripped
    assert "**Phase 2 trigger: NOT READY (capacity utilization" in md


def test_markdown_options(hist: FleetHistory) -> None:
    plain = render_markdown(hist, sparklines=False)
    assert "Per day" not in plain and "▇" not in plain
    colored = render_markdown(hist, color=True)
    assert "\x1b[32mMET\x1b[0m" in colored and "\x1b[31mNOT MET\x1b[0m" in colored


def test_sparkline_scale() -> None:
    assert sparkline([100.0, 96.0, 95.0, 94.9, 50.0, 0.0, None], 95.0) == "█▇▇▆▄▁·"


def test_duration() -> None:
    assert [duration(x) for x in (0, 45, 720, 750, 4500, 2 * DAY + 3 * 3600)] == [
        "0s",
        "45s",
        "12m",
        "12m30s",
        "1h15m",
        "2d03h",
    ]


FLEET_KEYS = {
    "uptime_pct", "utilization_pct", "up_s", "down_s", "busy_s", "unknown_s", "paused_s",
    "stopped_s", "unobserved_s", "restarts", "hangs", "failovers", "longest_outage_s",
    "days_at_target", "days_total", "per_day_uptime_pct", "running_now", "countable_now",
}  # fmt: skip
AGENT_KEYS = {
    "name", "state_now", "uptime_pct", "utilization_pct", "up_s", "down_s", "busy_s",
    "unknown_s", "paused_s", "stopped_s", "unobserved_s", "restarts", "hangs", "failovers",
    "longest_outage_s", "per_day_uptime_pct",
}  # fmt: skip


def test_json_keys_are_stable(hist: FleetHistory) -> None:
    j = to_json(hist)
    json.dumps(j)  # plain JSON types only
    assert set(j) == {
        "version", "window", "targets", "fleet", "checks", "agents", "worst_incidents", "verdict",
    }  # fmt: skip
    assert j["version"] == 1
    assert set(j["window"]) == {"start", "end", "days"}
    assert j["window"]["days"][0] == "2024-10-04"
    assert set(j["targets"]) == {"uptime_pct", "days_at_target_pct", "utilization_pct"}
    assert set(j["fleet"]) == FLEET_KEYS
    assert [c["key"] for c in j["checks"]] == [
        "operational_now", "uptime", "days_at_target", "utilization",
    ]  # fmt: skip
    assert set(j["checks"][0]) == {"key", "label", "value", "target", "met", "detail"}
    assert all(set(a) == AGENT_KEYS for a in j["agents"])
    inc = j["worst_incidents"][1]
    assert set(inc) == {
        "id", "scope", "subject", "kind", "opened", "closed", "duration_s", "forensics",
    }  # fmt: skip
    assert set(inc["forensics"]) == {"reason", "exit_status", "signal", "last_lines"}
    assert set(j["verdict"]) == {"ready", "text", "missing"}
    assert j["verdict"]["ready"] is False


def test_uptime_summary(hist: FleetHistory) -> None:
    fleet = uptime_summary(hist, None)
    assert set(fleet) == {"version", "window", "targets", "fleet", "agents"}
    assert [a["name"] for a in fleet["agents"]] == ["a", "b", "ghost"]
    one = uptime_summary(hist, "a")
    assert one["agent"]["restarts"] == 3
    assert set(one["agent"]) == AGENT_KEYS
    with pytest.raises(UnknownAgent):
        uptime_summary(hist, "nobody")
