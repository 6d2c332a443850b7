"""Provider failover and failback in a real fleetd, with real HTTP servers as providers.

Providers are threaded HTTP servers on 127.0.0.1 whose behaviour the test flips
(200, 503, hang, refused); agents are ``fleetd.demo_agent`` processes in tmux
panes that report ``FLEETD_PROVIDER``/``FLEETD_MODEL`` in their heartbeats, and
read a per-agent, per-provider status file so a test can make them report
``rate_limited`` or ``working`` on one provider only. Intervals are short
(probe 0.3 s, cooldown 1 s, hold-down 2 s) so the whole file stays brief.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fleetd.config import toml_value
from tests.conftest import require_binary
from tests.harness import Fleet, fleet, wait_for

__all__ = ["FakeProvider", "fleet", "proc_env", "provider_fleet", "running_on"]

FAST: dict[str, Any] = {
    "probe_interval": "0.3s",
    "probe_timeout": "0.5s",
    "failure_threshold": 2,
    "failure_window": "5s",
    "cooldown": "1s",
    "success_threshold": 2,
    "hold_down": "2s",
    "hold_down_max": "16s",
    "failback_max_wait": "4s",
}
# Outage -> every agent running (and beating) on the fallback. Generous for a
# loaded 2-core machine; the measured time is printed.
FAILOVER_BOUND = 20.0


class _Handler(BaseHTTPRequestHandler):
    owner: ClassVar[FakeProvider]

    def do_GET(self) -> None:
        prov = self.server.owner  # type: ignore[attr-defined]
        prov.hits += 1
        if prov.mode == "hang":
            time.sleep(2.0)  # longer than probe_timeout, bounded so shutdown is quick
        code = 503 if prov.mode in ("503", "hang") else 200
        body = b"down" if code == 503 else b"ok"
        try:
            self.send_response(code)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the prober gave up on a hanging request and hung up

    def log_message(self, format: str, *args: Any) -> None:
        return


class FakeProvider:
    """An LLM provider stand-in. ``mode``: ok | 503 | hang; ``close()`` refuses."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.mode = "ok"
        self.hits = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/models"

    def open(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        server.owner = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


@pytest.fixture
def providers() -> Iterator[dict[str, FakeProvider]]:
    made = {"primary": FakeProvider(), "fallback": FakeProvider()}
    for p in made.values():
        p.open()
    try:
        yield made
    finally:
        for p in made.values():
            p.close()


def provider_fleet(
    f: Fleet,
    provs: dict[str, dict[str, Any]],
    agents: list[str],
    chain: tuple[str, ...] = ("primary", "fallback"),
    **agent_fields: Any,
) -> None:
    """Write a roster with ``provs`` ([providers.X] bodies) and demo agents on ``chain``."""
    status = str(f.hb / "{agent}-{provider}.status")
    model = str(f.hb / "{agent}.model")
    extra = list(agent_fields.pop("args", []))
    for name in agents:
        f.add_agent(
            name,
            ["--status-file", status, "--model-file", model, *extra],
            providers=list(chain),
            runtime="demo-agent",
            **agent_fields,
        )
    write_roster(f, provs)


def write_roster(f: Fleet, provs: dict[str, dict[str, Any]]) -> None:
    """The harness roster plus ``[providers.X]`` tables."""
    f.write_roster()
    lines = [f.roster.read_text()]
    for pname, body in provs.items():
        lines.append(f"\n[providers.{pname}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in body.items() if v is not None]
    f.roster.write_text("\n".join(lines) + "\n")


def set_status(f: Fleet, agent: str, provider: str, status: str) -> None:
    path = f.hb / f"{agent}-{provider}.status"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(status)
    tmp.replace(path)


def ps(f: Fleet) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in f.call("ps")["agents"]}


def running_on(f: Fleet, agents: list[str], provider: str) -> dict[str, dict[str, Any]] | None:
    """Rows if every agent is RUNNING and its current process reports ``provider``."""
    rows = ps(f)
    for name in agents:
        r = rows[name]
        if (
            r["state"] != "RUNNING"
            or r["provider"] != provider
            or r["reported_provider"] != provider
            or r["heartbeat_age"] is None
            or r["heartbeat_age"] > 1.5
        ):
            return None
    return rows


def proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def count(f: Fleet, kind: str, agent: str | None = None, after: int = 0) -> int:
    return len([e for e in f.events(agent, [kind]) if e["id"] > after])


def last_id(f: Fleet) -> int:
    ev = f.call("events", {"limit": 1})["events"]
    return int(ev[-1]["id"]) if ev else 0


def restarts_for(f: Fleet, agent: str, after: int) -> list[dict[str, Any]]:
    return [e for e in f.events(agent, ["agent_restart_requested"]) if e["id"] > after]


def probed(prov: FakeProvider, **extra: Any) -> dict[str, Any]:
    return {"probe_url": prov.url, **FAST, **extra}


AGENTS = ["a1", "a2"]


@pytest.fixture(autouse=True)
def _tmux() -> None:
    require_binary("tmux")


# --- failover on probe failures --------------------------------------------------


@pytest.mark.parametrize("outage", ["503", "hang", "refused"])
def test_probe_outage_fails_over_once(
    fleet: Fleet, providers: dict[str, FakeProvider], outage: str
) -> None:
    primary, fallback = providers["primary"], providers["fallback"]
    provider_fleet(
        fleet,
        {
            "primary": probed(primary, model="m-primary"),
            "fallback": probed(fallback, model="m-fallback"),
        },
        AGENTS,
    )
    fleet.start()
    before = wait_for(lambda: running_on(fleet, AGENTS, "primary"), 20, what="agents on primary")
    old_pids = {n: before[n]["pid"] for n in AGENTS}
    mark = last_id(fleet)

    t0 = time.monotonic()
    if outage == "refused":
        primary.close()
    else:
        primary.mode = outage
    after = wait_for(
        lambda: running_on(fleet, AGENTS, "fallback"), FAILOVER_BOUND, what="agents on fallback"
    )
    took = time.monotonic() - t0
    print(f"\noutage ({outage}) -> last agent running on fallback: {took:.2f}s")

    for name in AGENTS:
        pid = after[name]["pid"]
        assert pid != old_pids[name]
        env = proc_env(pid)
        assert env["FLEETD_PROVIDER"] == "fallback"
        assert env["FLEETD_MODEL"] == "m-fallback"
    down = [e for e in fleet.events(kinds=["provider_down"]) if e["id"] > mark]
    assert [e["data"]["provider"] for e in down if e["alert"]] == ["primary"]
    time.sleep(2.0)  # nothing more happens while the primary stays down
    for name in AGENTS:
        assert count(fleet, "failover", name, mark) == 1
        assert len(restarts_for(fleet, name, mark)) == 1
        (fo,) = [e for e in fleet.events(name, ["failover"]) if e["id"] > mark]
        assert fo["data"]["from"] == "primary" and fo["data"]["to"] == "fallback"
        assert fo["incident"] == down[0]["incident"]
    assert ps(fleet)["a1"]["pid"] == after["a1"]["pid"]
    rows = {p["name"]: p for p in fleet.call("providers")["providers"]}
    assert rows["primary"]["state"] in ("DOWN", "PROBING")
    assert rows["fallback"]["agents"] == AGENTS


# --- failover on agents' own reports, then failback after the hold-down ----------


def test_reports_fail_over_then_fail_back_after_hold_down(fleet: Fleet) -> None:
    # No probe_url anywhere: only the agents' heartbeats speak for the providers.
    provider_fleet(
        fleet, {"primary": {**FAST, "model": "m-primary"}, "fallback": dict(FAST)}, AGENTS
    )
    fleet.start()
    wait_for(lambda: running_on(fleet, AGENTS, "primary"), 20, what="agents on primary")
    mark = last_id(fleet)
    t0 = time.monotonic()
    for name in AGENTS:
        set_status(fleet, name, "primary", "rate_limited")
    wait_for(lambda: running_on(fleet, AGENTS, "fallback"), FAILOVER_BOUND, what="on fallback")
    print(f"\nrate_limited reports -> all agents on fallback: {time.monotonic() - t0:.2f}s")
    for name in AGENTS:
        set_status(fleet, name, "primary", "")  # the primary is fine again
    for name in AGENTS:
        assert count(fleet, "failover", name, mark) == 1
    # Quiet probing (no probe_url): healthy after cooldown; then the 2 s hold-down.
    up = fleet.wait_event("provider_up", timeout=20)[-1]
    wait_for(lambda: running_on(fleet, AGENTS, "primary"), 20, what="agents back on primary")
    for name in AGENTS:
        (fb,) = [e for e in fleet.events(name, ["failback"]) if e["id"] > mark]
        assert fb["ts"] - up["ts"] >= 2.0 - 0.05, "failback before the hold-down"
        assert fb["data"]["to"] == "primary"
    time.sleep(2.0)
    for name in AGENTS:
        assert count(fleet, "failover", name, mark) == 1
        assert count(fleet, "failback", name, mark) == 1
        assert len(restarts_for(fleet, name, mark)) == 2


# --- failback waits for idle, at most failback_max_wait ---------------------------


def test_failback_waits_for_idle_or_max_wait(
    fleet: Fleet, providers: dict[str, FakeProvider]
) -> None:
    primary, fallback = providers["primary"], providers["fallback"]
    provider_fleet(
        fleet,
        {"primary": probed(primary), "fallback": probed(fallback)},
        AGENTS,
    )
    for name in AGENTS:
        set_status(fleet, name, "fallback", "working")  # busy all the time on the fallback
    fleet.start()
    wait_for(lambda: running_on(fleet, AGENTS, "primary"), 20, what="agents on primary")
    mark = last_id(fleet)
    primary.mode = "503"
    wait_for(lambda: running_on(fleet, AGENTS, "fallback"), FAILOVER_BOUND, what="on fallback")
    primary.mode = "ok"
    up = fleet.wait_event("provider_up", timeout=20)[-1]
    deferred = {n: fleet.wait_event("failback_deferred", n, timeout=20)[-1]["ts"] for n in AGENTS}
    assert all(ts - up["ts"] >= 2.0 - 0.05 for ts in deferred.values())
    time.sleep(1.0)
    assert count(fleet, "failback", after=mark) == 0, "failed back while busy"
    set_status(fleet, "a1", "fallback", "idle")
    fb1 = fleet.wait_event("failback", "a1", timeout=10)[-1]
    # a2 stays busy: it goes back when failback_max_wait (4 s) has passed.
    fb2 = fleet.wait_event("failback", "a2", timeout=20)[-1]
    assert fb1["ts"] < fb2["ts"]
    assert fb2["ts"] - deferred["a2"] >= 4.0 - 0.6
    wait_for(lambda: running_on(fleet, AGENTS, "primary"), 20, what="agents back on primary")
    time.sleep(1.5)
    for name in AGENTS:
        assert count(fleet, "failback", name, mark) == 1
        assert count(fleet, "failover", name, mark) == 1


# --- a flapping provider: no flip-flop, the hold-down grows ---------------------------


def test_flapping_provider_no_flip_flop(fleet: Fleet, providers: dict[str, FakeProvider]) -> None:
    primary, fallback = providers["primary"], providers["fallback"]
    # hold_down 6 s > the 5 s up windows: never trusted long enough while flapping.
    provider_fleet(
        fleet,
        {
            "primary": probed(primary, hold_down="6s", hold_down_max="60s"),
            "fallback": probed(fallback),
        },
        AGENTS,
    )
    fleet.start()
    wait_for(lambda: running_on(fleet, AGENTS, "primary"), 20, what="agents on primary")
    mark = last_id(fleet)
    end = time.monotonic() + 30.0
    while time.monotonic() < end:  # bounded: 3 cycles of 5 s down, 5 s up
        primary.mode = "503"
        time.sleep(5.0)
        primary.mode = "ok"
        time.sleep(5.0)
    row = {p["name"]: p for p in fleet.call("providers")["providers"]}["primary"]
    assert row["outages"] >= 2
    assert row["hold_down"] > 6.0, row
    for name in AGENTS:
        assert count(fleet, "failover", name, mark) == 1
        assert count(fleet, "failback", name, mark) == 0
        assert len(restarts_for(fleet, name, mark)) == 1
    assert running_on(fleet, AGENTS, "fallback")


# --- all providers down: one incident, no restart loop ---------------------------


def test_all_providers_down_one_incident(fleet: Fleet, providers: dict[str, FakeProvider]) -> None:
    primary, fallback = providers["primary"], providers["fallback"]
    provider_fleet(fleet, {"primary": probed(primary), "fallback": probed(fallback)}, AGENTS)
    fleet.start()
    wait_for(lambda: running_on(fleet, AGENTS, "primary"), 20, what="agents on primary")
    pids = {n: r["pid"] for n, r in ps(fleet).items()}
    mark = last_id(fleet)
    primary.close()
    fallback.mode = "503"
    fleet.wait_event("providers_all_down", timeout=20)
    time.sleep(4.0)  # several cooldowns and probe rounds
    alerts = [e for e in fleet.events(kinds=["providers_all_down"]) if e["id"] > mark]
    assert len([e for e in alerts if e["alert"]]) == 1
    assert set(alerts[0]["data"]["agents"]) == set(AGENTS)
    for name in AGENTS:
        # At most the one failover that raced the fallback's own breaker; no loop.
        assert len(restarts_for(fleet, name, mark)) <= 1
    rows = ps(fleet)
    stayed = [n for n in AGENTS if rows[n]["pid"] == pids[n]]
    down = fleet.call("providers")["all_down"]
    assert down is not None and down["incident"] == alerts[0]["incident"]
    assert stayed or all(len(restarts_for(fleet, n, mark)) == 1 for n in AGENTS)
    fallback.mode = "ok"
    cleared = fleet.wait_event("providers_all_down_cleared", timeout=20)[-1]
    assert cleared["incident"] == alerts[0]["incident"]
    wait_for(lambda: running_on(fleet, AGENTS, "fallback"), FAILOVER_BOUND, what="on fallback")


# --- secrets -------------------------------------------------------------------------


def test_secret_values_never_leave_the_agent(
    fleet: Fleet, providers: dict[str, FakeProvider]
) -> None:
    secret = "sk-test-" + uuid.uuid4().hex
    fleet.extra_env["FLEETD_TEST_KEY"] = secret
    provider_fleet(
        fleet,
        {
            "primary": probed(providers["primary"], secret_env=["FLEETD_TEST_KEY"]),
            "fallback": probed(providers["fallback"]),
        },
        ["leaky"],
        args=["--print-env", "FLEETD_TEST_KEY"],
    )
    fleet.start()
    rows = wait_for(lambda: running_on(fleet, ["leaky"], "primary"), 20, what="leaky on primary")
    assert proc_env(rows["leaky"]["pid"])["FLEETD_TEST_KEY"] == secret  # it did get the key
    res = fleet.ctl("restart", "leaky")
    assert res.returncode == 0, res.stderr
    fleet.ctl("provider", "down", "primary")  # failover: another restart with forensics
    wait_for(lambda: running_on(fleet, ["leaky"], "fallback"), 20, what="leaky on fallback")
    # Only the key of the provider it runs on (tmux's own environment is blanked).
    assert proc_env(ps(fleet)["leaky"]["pid"]).get("FLEETD_TEST_KEY", "") == ""

    forensics = fleet.call("logs", {"agent": "leaky", "limit": 10})["forensics"]
    assert forensics and any("FLEETD_TEST_KEY=***" in f["scrollback"] for f in forensics)
    outputs = []
    for argv in (
        ("ps",),
        ("show", "leaky"),
        ("providers",),
        ("logs", "leaky", "--limit", "10"),
        ("events", "--limit", "500"),
    ):
        for js in ((), ("--json",)):
            res = fleet.ctl(*js, *argv)
            assert res.returncode == 0, res.stderr
            outputs.append(res.stdout + res.stderr)
    assert all(secret not in out for out in outputs)
    fleet.stop()
    db = sqlite3.connect(fleet.state_dir / "events.sqlite3")
    try:
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert "FLEETD_TEST_KEY" in dump  # the scrollback is stored (redacted) ...
    assert secret not in dump  # ... and the value is not anywhere in the store
    assert secret not in fleet.log_text()


# --- operator commands and adoption after a fleetd restart ------------------------


def test_operator_commands_and_adoption(fleet: Fleet, providers: dict[str, FakeProvider]) -> None:
    provider_fleet(
        fleet,
        {
            "primary": probed(providers["primary"], hold_down="60s", hold_down_max="120s"),
            "fallback": probed(providers["fallback"]),
        },
        ["a1"],
    )
    fleet.start()
    wait_for(lambda: running_on(fleet, ["a1"], "primary"), 20, what="a1 on primary")
    res = fleet.ctl("provider", "down", "primary")
    assert res.returncode == 0 and "DOWN" in res.stdout, res.stdout + res.stderr
    rows = wait_for(lambda: running_on(fleet, ["a1"], "fallback"), 20, what="a1 on fallback")
    pid = rows["a1"]["pid"]
    out = fleet.ctl("providers").stdout
    assert "primary" in out and "(manual)" in out

    # fleetd restarts: the new one adopts a1 on the fallback, from its heartbeat.
    assert fleet.stop() == 0
    mark = last_id_offline(fleet)
    fleet.start()
    time.sleep(3.0)
    row = ps(fleet)["a1"]
    assert row["pid"] == pid and row["provider"] == "fallback" and row["drift"] is None
    assert count(fleet, "failover", "a1", mark) == 0
    assert count(fleet, "failback", "a1", mark) == 0
    assert count(fleet, "drift_detected", "a1", mark) == 0
    assert not restarts_for(fleet, "a1", mark)

    # Operator failback waives the 60 s hold-down; failover --to pins.
    res = fleet.ctl("--json", "failback", "a1")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: running_on(fleet, ["a1"], "primary"), 20, what="a1 back on primary")
    res = fleet.ctl("failover", "a1", "--to", "fallback")
    assert res.returncode == 0 and "fallback" in res.stdout, res.stdout + res.stderr
    wait_for(lambda: running_on(fleet, ["a1"], "fallback"), 20, what="a1 pinned on fallback")
    assert ps(fleet)["a1"]["pinned"] == "fallback"
    bad = fleet.ctl("failover", "a1", "--to", "nope")
    assert bad.returncode != 0 and "provider.unknown" in bad.stderr
    assert count(fleet, "failover", "a1", mark) == 1
    assert count(fleet, "failback", "a1", mark) == 1


def last_id_offline(f: Fleet) -> int:
    db = sqlite3.connect(f.state_dir / "events.sqlite3")
    try:
        row = db.execute("SELECT max(id) FROM events").fetchone()
    finally:
        db.close()
    return int(row[0] or 0)
