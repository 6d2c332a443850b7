"""History from a live fleetd: uptime, the event stream, metrics, compaction."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_binary
from tests.harness import Fleet, fleet, wait_for

__all__ = ["fleet"]


def _first(events: list[dict[str, Any]], kind: str, after: float = 0.0) -> dict[str, Any]:
    return next(e for e in events if e["kind"] == kind and e["ts"] >= after)


def test_uptime_reflects_a_measured_outage(fleet: Fleet) -> None:
    require_binary("tmux")
    fleet.add_agent("worker")
    fleet.start()
    pid = fleet.wait_state("worker", "RUNNING")["pid"]
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (a := fleet.agent("worker"))["state"] == "RUNNING" and a["pid"] != pid,
        what="respawned and running",
    )
    time.sleep(1.0)
    ev = fleet.events("worker")
    started = _first(ev, "agent_started")
    running1 = _first(ev, "agent_running")
    dead = _first(ev, "agent_dead")
    running2 = _first(ev, "agent_running", after=dead["ts"])
    outage = running2["ts"] - dead["ts"]
    expected_down = (running1["ts"] - started["ts"]) + outage
    out = fleet.ctl("uptime", "worker", "--json")
    assert out.returncode == 0, out.stderr
    a = json.loads(out.stdout)["agent"]
    assert abs(a["down_s"] - expected_down) < 0.01, (a, expected_down)
    first_start = running1["ts"] - started["ts"]
    assert abs(a["longest_outage_s"] - max(first_start, outage)) < 0.01
    assert a["restarts"] == 1
    assert 0 < a["uptime_pct"] < 100
    # The Markdown report a person reads carries the same agent and a verdict.
    rep = fleet.ctl("report", "--days", "1")
    assert rep.returncode == 0 and "| worker |" in rep.stdout and "Phase 2 trigger" in rep.stdout


def test_events_follow_streams_new_events(fleet: Fleet) -> None:
    require_binary("tmux")
    fleet.add_agent("worker")
    fleet.start()
    pid = fleet.wait_state("worker", "RUNNING")["pid"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetd.cli",
            "--socket",
            str(fleet.socket_path),
            "--json",
            "events",
            "--follow",
            "--agent",
            "worker",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=fleet.env,
    )
    try:
        time.sleep(1.0)  # let the follower subscribe
        os.kill(pid, signal.SIGKILL)
        kinds: list[str] = []
        deadline = time.monotonic() + 20
        assert proc.stdout is not None
        while "agent_started" not in kinds and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            e = json.loads(line)
            assert e["agent"] == "worker"
            kinds.append(e["kind"])
        assert "agent_dead" in kinds and "agent_started" in kinds, kinds
        assert kinds.index("agent_dead") < kinds.index("agent_started")
    finally:
        proc.kill()
        proc.wait(5)
    assert fleet.call("ping")["pid"] > 0  # a follower hanging up does not hurt fleetd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_endpoint_of_the_daemon(fleet: Fleet) -> None:
    require_binary("tmux")
    port = _free_port()
    fleet.settings["metrics_address"] = f"127.0.0.1:{port}"
    fleet.add_agent("a1")
    fleet.add_agent("a2")
    fleet.start()
    fleet.wait_state("a1", "RUNNING")
    fleet.wait_state("a2", "RUNNING")

    def running() -> float:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "fleetd_agents" and s.labels == {"state": "RUNNING", "host": "local"}:
                    return float(s.value)
        return -1.0

    assert wait_for(lambda: running() == 2.0, what="2 running in metrics")


def test_old_events_are_compacted_by_retention(fleet: Fleet) -> None:
    require_binary("tmux")
    fleet.settings["retention_days"] = 1
    fleet.add_agent("a1")
    fleet.state_dir.mkdir()
    db = fleet.state_dir / "events.sqlite3"
    from fleetd.store import Store

    store = Store(db)
    day = 86400.0
    t0 = (time.time() // day - 10) * day
    for i in range(5):  # an agent up for a day, then down, over ten days ago
        store.add_event(
            t0 + i * day, "agent_running", "old", host="local", agent="old", state="RUNNING"
        )
        store.add_event(
            t0 + i * day + 3600, "agent_dead", "old", host="local", agent="old", state="BACKOFF"
        )
    store.close()
    fleet.start()
    conn = sqlite3.connect(db)
    try:
        # Compaction goes one day per transaction: wait for the last of them.
        wait_for(
            lambda: (
                conn.execute("SELECT COUNT(*) FROM events WHERE agent = 'old'").fetchone()[0] == 0
            ),
            what="old raw events folded",
        )
        assert conn.execute("SELECT COUNT(*) FROM rollups WHERE agent = 'old'").fetchone()[0] > 0
    finally:
        conn.close()
