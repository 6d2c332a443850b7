"""History figures against a synthetic event history with hand-computed answers.

Times are hours from D0, a UTC midnight; the window is the three days [D0, D0+72h).
Two agents: ``a`` (outages, a pause, an unreachable host, a hang, an outage across
midnight, busy stretches, an out-of-order ts) and ``b`` (down when the window opens,
an operator restart, a failover, an operator stop, FATAL when the window closes).
fleetd itself is down 36h..38h (runs table).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetd.config import Targets
from fleetd.history import DAY, FleetHistory, compact, compute, last_days
from fleetd.store import Store

D0 = 20000 * DAY
H = 3600.0
M = 60.0


def at(hours: float, extra: float = 0.0) -> float:
    return D0 + hours * H + extra


def build(store: Store) -> None:
    def ev(ts: float, kind: str, agent: str, state: str | None, **data: Any) -> None:
        store.add_event(ts, kind, f"{agent} {kind}", host="h1", agent=agent, state=state, data=data)

    # fleetd: up from D0-2d to 36h (clean stop), again from 38h, last seen 80h.
    r1 = store.run_started(1, D0 - 2 * DAY)
    store.run_stopped(r1, at(36))
    r2 = store.run_started(2, at(38))
    store.run_seen(r2, at(80))

    # before the window
    ev(at(-1), "agent_started", "a", "STARTING", cause="not running")
    ev(at(-5), "agent_running", "b", "RUNNING")
    ev(at(-3000 / H), "agent_running", "a", "RUNNING")
    ev(at(-2), "agent_dead", "b", "BACKOFF", exit_status=1)
    # day 0
    ev(at(0, 1500), "agent_started", "b", "STARTING", cause="backoff")
    ev(at(0, 1800), "agent_running", "b", "RUNNING")
    ev(at(1), "agent_dead", "a", "BACKOFF", exit_status=1)
    ev(at(1, 10 * M), "agent_started", "a", "STARTING", cause="backoff")
    ev(at(1, 15 * M), "agent_running", "a", "RUNNING")
    ev(at(1), "agent_busy", "b", "RUNNING", busy=True)
    ev(at(2), "agent_busy", "a", "RUNNING", busy=True)
    ev(at(5), "agent_idle", "a", "RUNNING", busy=False)
    ev(at(5, -2), "agent_busy", "a", "RUNNING", busy=True)  # ts out of order: clamped to 5h
    ev(at(6), "agent_idle", "a", "RUNNING", busy=False)
    ev(at(10), "agent_paused", "a", "PAUSED")
    ev(at(12), "agent_resumed", "a", "UNKNOWN")
    ev(at(12, 60), "agent_running", "a", "RUNNING")
    ev(at(20), "agent_unknown", "a", "UNKNOWN", cause="host unreachable")
    ev(at(20), "agent_idle", "b", "RUNNING", busy=False)
    ev(at(22), "agent_recovered", "a", "RUNNING")
    # day 1
    ev(at(24), "agent_restart_requested", "b", "STARTING")
    ev(at(24, 10), "agent_started", "b", "STARTING", cause="operator restart")
    ev(at(24, 20), "agent_running", "b", "RUNNING")
    ev(at(26), "failover", "b", "STARTING", **{"from": "p1", "to": "p2"})
    ev(at(26, 5), "agent_started", "b", "STARTING", cause="provider p1 down")
    ev(at(26, 65), "agent_running", "b", "RUNNING")
    ev(at(40), "agent_hung", "a", "HUNG")
    ev(at(40, 300), "agent_started", "a", "STARTING", cause="hung")
    ev(at(40, 600), "agent_running", "a", "RUNNING")
    ev(at(46), "agent_busy", "a", "RUNNING", busy=True)
    ev(at(47.5), "agent_dead", "a", "BACKOFF", signal=9)
    # day 2 (a's outage crosses midnight)
    ev(at(48, 40 * M), "agent_started", "a", "STARTING", cause="backoff")
    ev(at(48, 45 * M), "agent_running", "a", "RUNNING")
    ev(at(50), "agent_idle", "a", "RUNNING", busy=False)
    ev(at(50), "agent_stopped", "b", "STOPPED")
    ev(at(52), "agent_start_requested", "b", "STARTING")
    ev(at(52, 10), "agent_started", "b", "STARTING", cause="operator start")
    ev(at(52, 30), "agent_running", "b", "RUNNING")
    ev(at(71), "agent_fatal", "b", "FATAL")
    # after the window
    ev(at(73), "agent_running", "b", "RUNNING")

    store.open_incident("a-1", "agent", "a", "agent_dead", at(47.5))
    store.close_incident("a-1", at(48.75))
    store.open_incident("b-0", "agent", "b", "agent_dead", at(-2))
    store.close_incident("b-0", at(0.5))
    store.open_incident("b-1", "agent", "b", "agent_fatal", at(71))
    store.open_incident("h1-1", "host", "h1", "host_unreachable", at(20))
    store.close_incident("h1-1", at(22))
    store.add_forensics(
        at(47.5, -1),
        "h1",
        "a",
        "exited",
        exit_status=None,
        signal=9,
        pid=42,
        scrollback="first\nl2\n\nl3\nl4\n  \n",
        heartbeat=None,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "events.sqlite")
    try:
        build(s)
        yield s
    finally:
        s.close()


def approx(x: float | None, y: float) -> bool:
    return x is not None and math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-6)


WINDOW = (D0, D0 + 3 * DAY)

# --- hand-computed answers (seconds) ---
A_DOWN = 15 * M + 600 + 4500
A_UNKNOWN = 60 + 2 * H
A_PAUSED = 2 * H
A_UNOBS = 2 * H
A_UP = 3 * DAY - A_DOWN - A_UNKNOWN - A_PAUSED - A_UNOBS
A_BUSY = 4 * H + 1.5 * H + 1.25 * H
B_DOWN = 1800 + 20 + 65 + 30 + H
B_STOPPED = 2 * H
B_UNOBS = 2 * H
B_UP = 3 * DAY - B_DOWN - B_STOPPED - B_UNOBS
B_BUSY = 19 * H
A_DAYS = [(86400 - 900 - 2 * H - A_UNKNOWN, 900), (86400 - 2400 - 2 * H, 2400), (83700, 2700)]
B_DAYS = [(84600, 1800), (86400 - 85 - 2 * H, 85), (86400 - 3630 - 2 * H, 3630)]


def test_agent_a_figures(store: Store) -> None:
    h = compute(store.connection, *WINDOW, Targets())
    a = h.agent("a")
    assert a is not None
    assert approx(a.down, A_DOWN)
    assert approx(a.unknown, A_UNKNOWN)
    assert approx(a.paused, A_PAUSED)
    assert approx(a.stopped, 0)
    assert approx(a.unobserved, A_UNOBS)
    assert approx(a.up, A_UP)
    assert approx(a.busy, A_BUSY)
    assert approx(a.uptime_pct, 100 * A_UP / (A_UP + A_DOWN))
    assert approx(a.utilization_pct, 100 * A_BUSY / A_UP)
    assert (a.restarts, a.hangs, a.failovers) == (3, 1, 0)
    assert approx(a.longest_outage, 4500)  # across midnight, one outage
    assert len(a.per_day_uptime) == 3
    for got, (up, down) in zip(a.per_day_uptime, A_DAYS, strict=True):
        assert approx(got, 100 * up / (up + down))
    assert a.state_now == "RUNNING"


def test_agent_b_figures_window_cuts_outages(store: Store) -> None:
    h = compute(store.connection, *WINDOW, Targets())
    b = h.agent("b")
    assert b is not None
    assert approx(b.down, B_DOWN)
    assert approx(b.stopped, B_STOPPED)
    assert approx(b.unobserved, B_UNOBS)
    assert approx(b.up, B_UP)
    assert approx(b.busy, B_BUSY)
    # operator restart / start are not restarts; backoff and failover are
    assert (b.restarts, b.hangs, b.failovers) == (2, 0, 1)
    assert approx(b.longest_outage, H)  # FATAL outage clipped at the window end
    for got, (up, down) in zip(b.per_day_uptime, B_DAYS, strict=True):
        assert approx(got, 100 * up / (up + down))
    assert b.state_now == "FATAL"


def test_fleet_figures_and_days_at_target(store: Store) -> None:
    h = compute(store.connection, *WINDOW, Targets())
    up, down = A_UP + B_UP, A_DOWN + B_DOWN
    assert approx(h.up, up)
    assert approx(h.down, down)
    assert approx(h.uptime_pct, 100 * up / (up + down))
    assert approx(h.utilization_pct, 100 * (A_BUSY + B_BUSY) / up)
    for i, got in enumerate(h.per_day_uptime):
        du = A_DAYS[i][0] + B_DAYS[i][0]
        dd = A_DAYS[i][1] + B_DAYS[i][1]
        assert approx(got, 100 * du / (du + dd))
    assert h.days_total == 3
    assert h.days_at_target == 3
    assert (h.restarts, h.hangs, h.failovers) == (5, 1, 1)
    assert (h.running_now, h.countable_now) == (1, 2)
    # fleet uptime per day: 98.29 %, 98.43 %, 96.18 %
    assert compute(store.connection, *WINDOW, Targets(uptime_pct=98)).days_at_target == 2
    assert compute(store.connection, *WINDOW, Targets(uptime_pct=98.3)).days_at_target == 1


def test_worst_incidents_with_forensics(store: Store) -> None:
    h = compute(store.connection, *WINDOW, Targets())
    got = [(i.id, i.duration) for i in h.worst_incidents]
    assert got == [("h1-1", 2 * H), ("a-1", 4500.0), ("b-1", H), ("b-0", 1800.0)]
    fx = h.worst_incidents[1].forensics
    assert fx is not None
    assert (fx.reason, fx.exit_status, fx.signal) == ("exited", None, 9)
    assert fx.last_lines == ("l2", "l3", "l4")
    assert h.worst_incidents[0].forensics is None  # host incident
    assert h.worst_incidents[2].closed is None
    only_a = compute(store.connection, *WINDOW, Targets(), agents=["a"])
    assert [i.id for i in only_a.worst_incidents] == ["h1-1", "a-1"]


def test_verdict_ready_and_not_ready(store: Store) -> None:
    not_ready = compute(store.connection, *WINDOW, Targets())
    assert not not_ready.verdict.ready
    assert len(not_ready.verdict.missing) == 1
    assert "utilization" in not_ready.verdict.missing[0]
    assert not_ready.verdict.text.startswith("Phase 2 trigger: NOT READY")

    ready = compute(store.connection, *WINDOW, Targets(utilization_pct=10))
    assert ready.verdict.ready
    assert ready.verdict.text == "Phase 2 trigger: READY"

    strict = compute(store.connection, *WINDOW, Targets(uptime_pct=99, utilization_pct=10))
    assert not strict.verdict.ready
    assert len(strict.verdict.missing) == 2  # uptime and days at target
    assert strict.days_at_target == 0


def test_unknown_agent_and_empty_window(store: Store) -> None:
    h = compute(store.connection, *WINDOW, Targets(), agents=["a", "ghost"])
    ghost = h.agent("ghost")
    assert ghost is not None
    assert ghost.uptime_pct is None
    assert ghost.per_day_uptime == (None, None, None)
    assert ghost.state_now is None
    # before fleetd ever ran: everything unobserved, no verdict figures
    early = compute(store.connection, D0 - 10 * DAY, D0 - 9 * DAY, Targets())
    assert early.uptime_pct is None
    assert not early.verdict.ready


def figures(h: FleetHistory) -> list[Any]:
    """Every figure of a report, flattened, for before/after comparisons."""
    out: list[Any] = [
        h.up,
        h.down,
        h.unknown,
        h.paused,
        h.stopped,
        h.unobserved,
        h.busy,
        h.uptime_pct,
        h.utilization_pct,
        *h.per_day_uptime,
        h.days_at_target,
        h.restarts,
        h.hangs,
        h.failovers,
        h.longest_outage,
        h.running_now,
        h.countable_now,
        h.verdict,
        [(i.id, i.duration, i.forensics) for i in h.worst_incidents],
    ]
    for a in h.agents:
        out += [
            a.name,
            a.up,
            a.down,
            a.unknown,
            a.paused,
            a.stopped,
            a.unobserved,
            a.busy,
            a.uptime_pct,
            a.utilization_pct,
            a.restarts,
            a.hangs,
            a.failovers,
            a.longest_outage,
            *a.per_day_uptime,
            a.state_now,
        ]
    return out


def same(x: list[Any], y: list[Any]) -> bool:
    assert len(x) == len(y)
    for p, q in zip(x, y, strict=True):
        if isinstance(p, float) and isinstance(q, float):
            assert math.isclose(p, q, rel_tol=1e-12, abs_tol=1e-6), (p, q)
        else:
            assert p == q, (p, q)
    return True


WINDOWS = [
    WINDOW,
    (D0, D0 + 1 * DAY),
    (D0 + DAY, D0 + 2 * DAY + 5 * H),  # ends mid-day, in the raw part after compaction
    (D0 + 2 * DAY, D0 + 3 * DAY),  # starts at the boundary: initial state from rollups
    (D0 - DAY, D0 + 4 * DAY),
]


@pytest.mark.parametrize("boundary_days", [1, 2, 5])
def test_compaction_changes_no_figure(store: Store, boundary_days: int) -> None:
    conn = store.connection
    boundary = D0 + boundary_days * DAY
    # Exactness holds for windows whose edges are midnights or lie after the
    # compaction boundary (reports use last_days(), which is such a window); a
    # mid-day edge inside the compacted range is pro rata (documented).
    windows = [(s, e) for s, e in WINDOWS if e % DAY == 0 or e >= boundary]
    before = [figures(compute(conn, s, e, Targets())) for s, e in windows]
    raw_rows = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    deleted = compact(conn, D0 + boundary_days * DAY + 5 * H)  # rounds down to midnight
    assert deleted > 0
    left = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert left == raw_rows - deleted
    assert conn.execute("SELECT COUNT(*) FROM events WHERE ts < ?", (boundary,)).fetchone()[0] == 0
    after = [figures(compute(conn, s, e, Targets())) for s, e in windows]
    for x, y in zip(before, after, strict=True):
        assert same(x, y)
    # compacting again folds nothing new and still changes nothing
    assert compact(conn, D0 + boundary_days * DAY) == 0
    again = [figures(compute(conn, s, e, Targets())) for s, e in windows]
    for x, y in zip(before, again, strict=True):
        assert same(x, y)


def test_compaction_is_incremental(store: Store) -> None:
    conn = store.connection
    before = figures(compute(conn, *WINDOW, Targets()))
    compact(conn, D0 + DAY)
    compact(conn, D0 + 2 * DAY)
    compact(conn, D0 + 3 * DAY)
    assert same(before, figures(compute(conn, *WINDOW, Targets())))
    days = conn.execute("SELECT COUNT(*) FROM rollups WHERE agent = 'a'").fetchone()[0]
    assert days == 4  # D0-1 (first seen) .. D0+2


def test_initial_state_after_boundary_from_rollups(store: Store) -> None:
    conn = store.connection
    compact(conn, D0 + 2 * DAY)
    h = compute(conn, D0 + 2 * DAY, D0 + 3 * DAY, Targets())
    a = h.agent("a")
    assert a is not None
    # a is in BACKOFF at midnight (outage across it) and busy since 46h
    assert approx(a.down, 2700)
    assert approx(a.busy, 1.25 * H)
    assert approx(a.longest_outage, 2700)


def test_last_days_is_day_aligned() -> None:
    start, end = last_days(D0 + 5 * H, 30)
    assert end == D0 + 5 * H
    assert start == D0 - 29 * DAY
    assert start % DAY == 0


def test_schema_added_without_committing_callers_transaction(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.sqlite")
    try:
        Store(tmp_path / "x.sqlite").close()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO meta(key, value) VALUES ('k', 'v')")
        compute(conn, D0, D0 + DAY, Targets())
        assert conn.in_transaction
        conn.rollback()
        assert conn.execute("SELECT COUNT(*) FROM meta WHERE key = 'k'").fetchone()[0] == 0
    finally:
        conn.close()
