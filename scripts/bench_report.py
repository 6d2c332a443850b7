#!/usr/bin/env python3
"""Benchmark the history report on a realistic year of events.

Generates N agents x D days of events into a fresh SQLite store (a few state
changes per agent per day: deaths with backoff and restart, the odd hang, host
unreachable stretch and failover, busy/idle toggles; fleetd itself restarting a
few times a month), then times:

* the 30-day report (median of several runs), with and without a roster list;
* compaction of everything older than the report window;
* the same report after compaction (its figures must be identical).

Usage: scripts/bench_report.py [--agents 100] [--days 365] [--runs 7] [--db PATH]
Not a test: it prints numbers and asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleetd.config import Targets
from fleetd.history import DAY, compact, compute, last_days
from fleetd.store import Store

T0 = 19000 * DAY  # a UTC midnight


def _agent_day(
    rng: random.Random, name: str, host: str, day0: float, st: dict[str, Any]
) -> Iterator[tuple[float, str, str, str, str, dict[str, Any]]]:
    """One agent's events for one day: (ts, kind, host, agent, state, data)."""
    t = day0
    end = day0 + DAY
    while True:
        t += rng.expovariate(1 / 5400)  # something happens every ~1.5 h
        if t >= end:
            return
        r = rng.random()
        if r < 0.75:
            st["busy"] = not st["busy"]
            kind = "agent_busy" if st["busy"] else "agent_idle"
            yield t, kind, host, name, "RUNNING", {"busy": st["busy"]}
            continue
        if r < 0.88:  # death, backoff, restart
            yield t, "agent_dead", host, name, "BACKOFF", {"exit_status": 1}
            st["deaths"].append(t)
            t += rng.uniform(5, 120)
            yield t, "agent_started", host, name, "STARTING", {"cause": "backoff"}
        elif r < 0.92:
            yield t, "agent_hung", host, name, "HUNG", {}
            t += rng.uniform(30, 300)
            yield t, "agent_started", host, name, "STARTING", {"cause": "hung"}
        elif r < 0.96:
            yield t, "agent_unknown", host, name, "UNKNOWN", {"cause": "host unreachable"}
            t += rng.uniform(60, 1800)
            yield t, "agent_recovered", host, name, "RUNNING", {}
            continue
        else:
            yield t, "failover", host, name, "STARTING", {"from": "p1", "to": "p2"}
            t += rng.uniform(1, 10)
            yield t, "agent_started", host, name, "STARTING", {"cause": "provider down"}
        t += rng.uniform(5, 60)
        yield t, "agent_running", host, name, "RUNNING", {}


def generate(path: Path, agents: int, days: int, seed: int = 1) -> tuple[float, float, int]:
    """Fill a store at ``path``; returns (first ts, last ts, number of events)."""
    rng = random.Random(seed)
    store = Store(path)
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    names = [f"agent-{i:03d}" for i in range(agents)]
    hosts = {n: f"host-{i % 5}" for i, n in enumerate(names)}
    states: dict[str, dict[str, Any]] = {
        n: {"state": "RUNNING", "busy": False, "deaths": []} for n in names
    }
    total = 0
    conn.execute("BEGIN")
    run_start = T0
    for n in names:
        conn.execute(
            "INSERT INTO events(ts, kind, host, agent, state, message, data)"
            " VALUES (?, 'agent_adopted', ?, ?, 'RUNNING', 'adopted', '{}')",
            (T0, hosts[n], n),
        )
    for d in range(days):
        day0 = T0 + d * DAY
        rows: list[tuple[float, str, str, str, str, dict[str, Any]]] = []
        for n in names:
            rows.extend(_agent_day(rng, n, hosts[n], day0, states[n]))
        rows.sort(key=lambda r: r[0])
        conn.executemany(
            "INSERT INTO events(ts, kind, host, agent, state, message, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((ts, k, h, a, s, f"{a} {k}", json.dumps(dt)) for ts, k, h, a, s, dt in rows),
        )
        total += len(rows)
        for n in names:
            for t in states[n]["deaths"]:
                iid = f"{n}-{t:.0f}"
                conn.execute(
                    "INSERT OR IGNORE INTO incidents(id, scope, subject, kind, opened, closed)"
                    " VALUES (?, 'agent', ?, 'agent_dead', ?, ?)",
                    (iid, n, t - 60, t + rng.uniform(10, 600)),
                )
                lines = "\n".join(f"line {j} of {n}" for j in range(20))
                conn.execute(
                    "INSERT INTO forensics(ts, host, agent, reason, exit_status, signal, pid,"
                    " scrollback) VALUES (?, ?, ?, 'exited', 1, NULL, 1234, ?)",
                    (t - 60, hosts[n], n, lines),
                )
            states[n]["deaths"] = []
        # fleetd restarts every ~10 days with a short gap
        if d % 10 == 9:
            gap = day0 + rng.uniform(0, DAY - 600)
            conn.execute(
                "INSERT INTO runs(pid, started, last_seen, stopped) VALUES (1, ?, ?, ?)",
                (run_start, gap, gap),
            )
            run_start = gap + rng.uniform(10, 300)
    last = T0 + days * DAY
    conn.execute(
        "INSERT INTO runs(pid, started, last_seen) VALUES (1, ?, ?)", (run_start, last - 5)
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return T0, last, total + agents


def _time(fn: Any, runs: int) -> tuple[float, Any]:
    samples = []
    result = None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--window", type=int, default=30)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--db", type=Path, default=None)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "bench.sqlite"
        t = time.perf_counter()
        _first, last, n = generate(path, args.agents, args.days)
        gen_s = time.perf_counter() - t
        size = path.stat().st_size / 1e6
        print(
            f"generated {n} events, {args.agents} agents x {args.days} days "
            f"in {gen_s:.1f} s ({size:.0f} MB)"
        )

        conn = sqlite3.connect(path, isolation_level=None)
        try:
            targets = Targets()
            start, end = last_days(last - 1, args.window)
            roster = [f"agent-{i:03d}" for i in range(args.agents)]
            in_window = conn.execute(
                "SELECT COUNT(*) FROM events WHERE ts >= ? AND ts < ?", (start, end)
            ).fetchone()[0]
            t = time.perf_counter()
            compute(conn, start, end, targets)  # first use creates the indexes
            first_s = time.perf_counter() - t
            print(f"first report (creates the history indexes): {first_s:.2f} s")
            med_all, h = _time(lambda: compute(conn, start, end, targets), args.runs)
            med_roster, _ = _time(
                lambda: compute(conn, start, end, targets, agents=roster), args.runs
            )
            print(
                f"{args.window}-day report: {in_window} events in window; median of "
                f"{args.runs}: {med_all * 1000:.0f} ms (all agents), "
                f"{med_roster * 1000:.0f} ms (roster list)"
            )
            print(
                f"  fleet uptime {h.uptime_pct:.2f} %, utilization {h.utilization_pct:.2f} %,"
                f" days at target {h.days_at_target}/{h.days_total},"
                f" restarts {h.restarts}, hangs {h.hangs}, failovers {h.failovers};"
                f" {h.verdict.text}"
            )

            t = time.perf_counter()
            deleted = compact(conn, start)
            comp_s = time.perf_counter() - t
            print(f"compaction before the window: {deleted} rows folded in {comp_s:.2f} s")
            med_after, h2 = _time(lambda: compute(conn, start, end, targets), args.runs)
            same = (h2.up, h2.down, h2.busy, h2.per_day_uptime, h2.restarts) == (
                h.up,
                h.down,
                h.busy,
                h.per_day_uptime,
                h.restarts,
            )
            print(
                f"report after compaction: {med_after * 1000:.0f} ms; "
                f"figures {'unchanged' if same else 'CHANGED'}"
            )
            ys, ye = last_days(last - 1, args.days)
            med_year, _ = _time(lambda: compute(conn, ys, ye, targets), max(1, args.runs // 2))
            print(f"{args.days}-day report over rollups + raw window: {med_year * 1000:.0f} ms")
            return 0 if same else 1
        finally:
            conn.close()


if __name__ == "__main__":
    sys.exit(main())
