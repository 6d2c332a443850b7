"""Remote (agentless) supervision end to end: real sshd hosts in network namespaces.

One lab of three hosts is shared by the module (creating it costs seconds); every
test uses its own tmux socket name and agent names, kills what it started on the
hosts (by pid) and heals what it partitioned, in ``finally``.

In-process tests drive a ``HostSupervisor`` over an ``SshHost`` (round trips,
cycle time, leaked tasks); the others run a real hub ``fleetd`` and read it
through its control socket and ``fleetctl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from fleetd.config import Roster, parse_roster, toml_value
from fleetd.events import EventBus
from fleetd.hosts.ssh import SshHost
from fleetd.model import State
from fleetd.store import Store
from fleetd.supervisor import HostSupervisor
from tests.harness import AGENT, PY, Fleet, wait_for
from tests.netns import NetnsHost, NetnsLab, running_lab

pytestmark = pytest.mark.root

DEFAULTS: dict[str, Any] = {
    "heartbeat_interval": "0.5s",
    "staleness_factor": 3,
    "recovery_settle": "1s",
    "stop_timeout": "2s",
    "backoff": {"initial": "0.3s", "factor": 2.0, "cap": "2s", "jitter": 0.1},
    "intensity": {"max_restarts": 5, "window": "60s"},
}


@pytest.fixture(scope="module")
def lab() -> Iterator[NetnsLab]:
    with running_lab(3) as lab:
        yield lab


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def agent_procs(name: str) -> list[psutil.Process]:
    """Live processes of agent ``name`` anywhere (namespaces share the pid space)."""
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get("FLEETD_AGENT") == name:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_remote_tmux(host: NetnsHost, socket_name: str) -> None:
    """Kill the tmux server on ``socket_name`` of ``host`` and everything under it, by pid."""
    for sock in host.tmux_tmpdir.glob(f"tmux-*/{socket_name}"):
        res = subprocess.run(
            ["tmux", "-S", str(sock), "display-message", "-p", "#{pid}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if res.returncode != 0 or not res.stdout.strip().isdigit():
            continue
        try:
            server = psutil.Process(int(res.stdout.strip()))
            victims = [*server.children(recursive=True), server]
        except psutil.NoSuchProcess:
            continue
        for p in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(victims, timeout=5)


# --- in-process: HostSupervisor over SshHost ---------------------------------------


def small_roster(tmp: Path, h: NetnsHost, sock: str, agents: dict[str, Any], **host: Any) -> Roster:
    return parse_roster(
        {
            "settings": {
                "state_dir": str(tmp / "state"),
                "runtime_dir": str(tmp / "run"),
                "poll_interval": "1s",
            },
            "defaults": {**DEFAULTS, "tmux_socket": sock},
            "hosts": {h.name: h.host_spec_dict(**host)},
            "agents": {
                name: {"host": h.name, "workdir": str(tmp), **body} for name, body in agents.items()
            },
        },
        "test-roster",
    )


async def until(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_supervisor_over_ssh_round_trips_partition_no_leaks(
    lab: NetnsLab, tmp_path: Path
) -> None:
    """1 round trip per cycle; link cut -> one incident, UNKNOWN; heal -> adopted, same
    pid, nothing respawned; no asyncio task left once the supervisor stops."""
    h = lab.hosts[0]
    sock = uniq("ip")
    name = uniq("solo")
    hb = tmp_path / "hb"
    hb.mkdir()
    roster = small_roster(
        tmp_path,
        h,
        sock,
        {name: {"command": AGENT, "heartbeat_file": str(hb / "{agent}.hb")}},
        # Bad health on purpose (free disk can never be >= 100%): one alert.
        health={"disk_free_min_pct": 100},
    )
    store = Store(tmp_path / "events.sqlite3")
    bus = EventBus(store)
    baseline = set(asyncio.all_tasks())
    host = SshHost(roster.hosts[h.name])
    sup = HostSupervisor(host, roster, store, bus)
    rt = sup.add_agent(roster.agents[name], sup.initial_agent(roster.agents[name], {}, {}))

    def kinds(kind: str) -> list[Any]:
        return store.events(kinds=[kind])

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            await until(lambda: rt.agent.state is State.RUNNING, 20, "RUNNING")
            pid = rt.agent.pid
            await asyncio.sleep(1.5)  # settle (recovery, first beats)
            rt0, c0 = host.round_trips, sup.cycles
            await until(lambda: sup.cycles >= c0 + 5, 15, "5 cycles")
            rt1, c1 = host.round_trips, sup.cycles
            print(
                f"\nround trips {rt1 - rt0} over {c1 - c0} cycles; "
                f"cycle time {sup.last_cycle_duration:.3f}s"
            )
            assert rt1 - rt0 == c1 - c0
            assert len(kinds("host_health_bad")) == 1
            bad = kinds("host_health_bad")[0]
            assert bad.alert and bad.data["disk_free_pct"] < 100 and bad.data["problems"]

            # Cut the cable.
            cut = time.monotonic()
            lab.partition(0, "link")
            await until(lambda: sup.watch.incident is not None, 20, "host incident")
            detected = time.monotonic() - cut
            bound = h.host_spec_dict()["keepalive_interval"] * (
                h.host_spec_dict()["keepalive_count"] + 1
            )
            print(f"partition detected in {detected:.2f}s (keepalive bound {bound:g}s + cycle)")
            await until(lambda: rt.agent.state is State.UNKNOWN, 10, "UNKNOWN")
            await asyncio.sleep(2.5)  # several skipped cycles: still one alert
            assert len(kinds("host_unreachable")) == 1 and kinds("host_unreachable")[0].alert
            assert [i["scope"] for i in store.open_incidents() if i["subject"] == h.name].count(
                "host"
            ) >= 1

            # Health recovers when thresholds are relaxed (a reload does this).
            sup.roster = small_roster(tmp_path, h, sock, {name: {"command": AGENT}})
            lab.heal(0)
            await until(lambda: kinds("host_recovered"), 20, "host_recovered")
            await until(lambda: rt.agent.state is State.RUNNING, 15, "RUNNING again")
            assert rt.agent.pid == pid
            await until(lambda: kinds("host_health_ok"), 10, "host_health_ok")
            assert len(kinds("agent_started")) == 1  # never respawned
            assert len(kinds("agent_adopted")) == 1
            assert len(agent_procs(name)) == 1
            assert sup.watch.incident is None
            tg.cancel_scope.cancel()
        assert host.state == "unreachable" and host.last_error == "closed"
        await asyncio.sleep(0.2)
        left = {t for t in asyncio.all_tasks() if t not in baseline and not t.done()}
        assert not left, f"leaked tasks: {left}"
    finally:
        lab.heal(0)
        await host.close()
        store.close()
        kill_remote_tmux(h, sock)


# --- a real hub fleetd ----------------------------------------------------------------


def toml(v: Any) -> str:
    """Like the harness's toml_value, but strings may hold newlines and controls
    (a JSON string with ASCII escapes is a valid TOML basic string)."""
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=True)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml(x)}" for k, x in v.items()) + " }"
    return toml_value(v)


class Hub(Fleet):
    """The test harness's fleetd, with SSH hosts in its roster."""

    def __init__(self, root: Path, lab: NetnsLab) -> None:
        super().__init__(root)
        self.lab = lab
        self.defaults = dict(DEFAULTS)
        self.hosts: dict[str, dict[str, Any]] = {}

    def add_host(self, h: NetnsHost, **overrides: Any) -> None:
        spec = h.host_spec_dict(**overrides)
        spec.pop("name")
        self.hosts[h.name] = spec

    def write_roster(self, text: str | None = None) -> None:
        if text is None:
            settings = {
                "state_dir": str(self.state_dir),
                "runtime_dir": str(self.run_dir),
                **self.settings,
            }
            doc: dict[str, Any] = {
                "settings": settings,
                "defaults": {"tmux_socket": self.socket_name, **self.defaults},
                "hosts": self.hosts,
                "agents": {
                    n: {k: v for k, v in b.items() if v is not None} for n, b in self.agents.items()
                },
            }
            lines = []
            for table, body in doc.items():
                if table in ("hosts", "agents"):
                    for name, entries in body.items():
                        lines.append(f'\n[{table}."{name}"]')
                        lines += [f"{k} = {toml(v)}" for k, v in entries.items()]
                else:
                    lines.append(f"\n[{table}]")
                    lines += [f"{k} = {toml(v)}" for k, v in body.items()]
            text = "\n".join(lines) + "\n"
        self.roster.write_text(text)

    def host_row(self, name: str) -> dict[str, Any]:
        return next(h for h in self.call("hosts")["hosts"] if h["name"] == name)

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            for h in self.lab.hosts:
                kill_remote_tmux(h, self.socket_name)


@pytest.fixture
def hub(tmp_path: Path, lab: NetnsLab) -> Iterator[Hub]:
    f = Hub(tmp_path, lab)
    try:
        yield f
    finally:
        for i in range(len(lab.hosts)):
            lab.heal(i)
        f.cleanup()


def started(hub: Hub, name: str) -> int:
    return len(hub.events(name, ["agent_started"]))


def test_remote_agents_respawn_hang_adopt_and_ps(hub: Hub, lab: NetnsLab) -> None:
    h0, h1 = lab.hosts[0], lab.hosts[1]
    hub.add_host(h0)
    hub.add_host(h1)
    a0, a1, hung = uniq("w0"), uniq("w1"), uniq("hung")
    hub.add_agent(a0, host=h0.name)
    hub.add_agent(a1, host=h1.name)
    hub.add_agent(hung, ["--hang-after", "1.5"], host=h1.name)
    hub.start()
    p0 = hub.wait_state(a0, "RUNNING")["pid"]
    p1 = hub.wait_state(a1, "RUNNING")["pid"]

    # ps --json: every agent with its host and host state.
    out = hub.ctl("--json", "ps")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["agents"]}
    assert rows[a0]["host"] == h0.name and rows[a1]["host"] == h1.name
    assert rows[a0]["host_state"] == "reachable"
    table = hub.ctl("ps")
    assert h0.name in table.stdout and a0 in table.stdout

    # One exec round trip per cycle on h0 while its agent is idle.
    r0 = hub.host_row(h0.name)
    wait_for(lambda: hub.host_row(h0.name)["cycles"] >= r0["cycles"] + 4, 15, what="4 cycles")
    r1 = hub.host_row(h0.name)
    print(
        f"\nh0: {r1['round_trips'] - r0['round_trips']} round trips over "
        f"{r1['cycles'] - r0['cycles']} cycles; cycle {r1['cycle_seconds']:.3f}s"
    )
    assert r1["round_trips"] - r0["round_trips"] == r1["cycles"] - r0["cycles"]
    assert r1["connection"] == "connected" and r1["mode"] == "agentless"
    assert r1["health"]["cpus"] >= 1
    hosts = json.loads(hub.ctl("--json", "hosts").stdout)["hosts"]
    assert {h["name"] for h in hosts} >= {"local", h0.name, h1.name}
    assert hub.ctl("hosts").returncode == 0

    # kill -9 inside the namespace: respawned once, forensics over SSH.
    h0.ns("kill", "-9", str(p0))
    again = wait_for(
        lambda: (a := hub.agent(a0))["pid"] not in (None, p0) and a["state"] == "RUNNING" and a,
        30,
        what="respawn",
    )
    dead = hub.wait_event("agent_dead", a0)[0]
    # tmux sometimes reaps a dead pane's process seconds late and then reports no
    # status at all; fleetd waits DEAD_STATUS_GRACE for it, then records the death
    # without it (locally it reads the zombie instead; see test_supervision).
    assert dead["data"].get("signal") in (signal.SIGKILL, None) and dead["host"] == h0.name
    logs = hub.call("logs", {"agent": a0})["forensics"]
    assert logs and logs[0]["pid"] == p0 and "step" in logs[0]["scrollback"]
    wait_for(lambda: len(agent_procs(a0)) == 1, 10, what="one copy of a0")

    # A hung agent (alive, no beats) is killed over SSH and respawned.
    hub.wait_event("agent_hung", hung, timeout=30)
    wait_for(lambda: started(hub, hung) >= 2, 30, what="hung agent respawned")

    # The hub restarts: everything running is adopted, same pids, nothing started.
    before = {n: started(hub, n) for n in (a0, a1)}
    hub.stop()
    hub.start()
    assert hub.wait_state(a0, "RUNNING")["pid"] == again["pid"]
    assert hub.wait_state(a1, "RUNNING")["pid"] == p1
    assert {n: started(hub, n) for n in (a0, a1)} == before
    assert hub.events(a1, ["agent_adopted"])
    assert len(agent_procs(a0)) == 1 and len(agent_procs(a1)) == 1


def test_partitions_link_and_iptables_heal_and_escalate(
    hub: Hub, lab: NetnsLab, tmp_path: Path
) -> None:
    h0, h1 = lab.hosts[0], lab.hosts[1]
    marker = tmp_path / "escalated"
    script = tmp_path / "escalate.sh"
    script.write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 7\n')
    script.chmod(0o755)
    hub.add_host(h0)
    hub.add_host(h1, escalate_after="1.5s", escalate_command=[str(script), "reboot", h1.name])
    a0, b0, a1 = uniq("a0"), uniq("b0"), uniq("a1")
    hub.add_agent(a0, host=h0.name)
    hub.add_agent(b0, host=h0.name)
    hub.add_agent(a1, host=h1.name)
    hub.start()
    pa0 = hub.wait_state(a0, "RUNNING")["pid"]
    pb0 = hub.wait_state(b0, "RUNNING")["pid"]
    pa1 = hub.wait_state(a1, "RUNNING")["pid"]

    for i, how in ((0, "link"), (1, "iptables")):
        host = lab.hosts[i]
        cut = time.monotonic()
        lab.partition(i, how)  # type: ignore[arg-type]
        wait_for(lambda: hub.host_row(host.name)["state"] == "unreachable", 20, what="down")
        print(f"\n{host.name} ({how}) partition detected in {time.monotonic() - cut:.2f}s")
        names = (a0, b0) if i == 0 else (a1,)
        for n in names:
            hub.wait_state(n, "UNKNOWN", timeout=10)
        if i == 0:
            # b0 really dies while its host is cut off: it must be respawned once.
            host.ns("kill", "-9", str(pb0))
        else:
            hub.wait_event("host_escalated", timeout=20)
        time.sleep(2.0)
        downs = [e for e in hub.events(kinds=["host_unreachable"]) if e["host"] == host.name]
        assert len(downs) == 1 and downs[0]["alert"] is True
        row = hub.host_row(host.name)
        assert row["host_incident"] and row["connection"] in ("unreachable", "connecting")
        lab.heal(i)
        wait_for(
            lambda: [e for e in hub.events(kinds=["host_recovered"]) if e["host"] == host.name],
            25,
            what=f"{host.name} recovered",
        )
        for n in names:
            hub.wait_state(n, "RUNNING", timeout=30)

    assert hub.agent(a0)["pid"] == pa0 and hub.agent(a1)["pid"] == pa1
    assert started(hub, a0) == 1 and started(hub, a1) == 1
    assert started(hub, b0) == 2  # the one that really died, respawned exactly once
    assert hub.agent(b0)["pid"] != pb0
    for n in (a0, b0, a1):
        assert len(agent_procs(n)) == 1, n
    esc = hub.events(kinds=["host_escalated"])
    assert len(esc) == 1 and esc[0]["data"]["exit_status"] == 7 and esc[0]["alert"]
    assert marker.read_text().splitlines() == [f"reboot {h1.name}"]
    assert hub.host_row(h1.name)["host_incident"] is None


def test_changed_host_key_is_refused_and_alerted(hub: Hub, lab: NetnsLab, tmp_path: Path) -> None:
    h2 = lab.hosts[2]
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    keytype, key = other.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts_changed"
    known.write_text(f"{h2.address} {keytype} {key}\n")
    hub.add_host(h2, known_hosts=str(known))
    name = uniq("k")
    hub.add_agent(name, host=h2.name)
    sessions = h2.sshd_sessions()
    hub.start()
    ev = hub.wait_event("host_key_rejected")[0]
    assert ev["alert"] and ev["host"] == h2.name and ev["data"]["code"] == "host.key_rejected"
    time.sleep(2.0)
    assert len(hub.events(kinds=["host_key_rejected"])) == 1
    # Between retries the connection is briefly "connecting" again; it settles back.
    row = wait_for(
        lambda: (r := hub.host_row(h2.name))["connection"] == "key_rejected" and r,
        10,
        what="key_rejected connection state",
    )
    assert row["state"] == "key_rejected"
    wait_for(lambda: hub.agent(name)["host_state"] == "key_rejected", 10, what="agent host_state")
    assert hub.agent(name)["state"] == "UNKNOWN"
    assert h2.sshd_sessions() == sessions  # no command ever reached the host
    assert not agent_procs(name)


HOSTILE = [
    "'; touch {m}/pwned1 #",
    "$(touch {m}/pwned2)",
    "`touch {m}/pwned3`",
    "#(touch {m}/pwned4)",
    "x; touch {m}/pwned5;",
    "a\ntouch {m}/pwned6\n",
    '"; touch {m}/pwned7; "',
]

RECORDER = (
    "import json, os, sys, time\n"
    # No braces: command parts are roster templates.
    "json.dump(dict(argv=sys.argv[2:], env=os.environ.get('HOSTILE'), cwd=os.getcwd()),"
    " open(sys.argv[1], 'w'))\n"
    "time.sleep(300)\n"
)


def test_hostile_roster_values_run_nothing(hub: Hub, lab: NetnsLab, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    marker.mkdir()
    values = [v.format(m=marker) for v in HOSTILE]
    # A directory name cannot hold '/': its payload creates 'pwned8' in whatever
    # directory it would run in (searched for below).
    workdir = tmp_path / "wd '; touch pwned8 # $(id) #(id) ;"
    workdir.mkdir()
    h0 = lab.hosts[0]
    hub.add_host(h0)
    names = {h0.name: uniq("hostile"), "local": uniq("hostile-local")}
    for host, name in names.items():
        hub.add_agent(
            name,
            host=host,
            command=[PY, "-c", RECORDER, str(tmp_path / f"{name}.json"), *values],
            env={"HOSTILE": "".join(values)},
            workdir=str(workdir),
            heartbeat_file=None,
        )
    hub.start()
    for host, name in names.items():
        hub.wait_state(name, "RUNNING", timeout=30)
        out = tmp_path / f"{name}.json"
        rec = wait_for(lambda: out.exists() and out.read_text(), 15, what="recorder output")
        got = json.loads(rec)
        assert got["argv"] == values, host
        assert got["env"] == "".join(values), host
        assert os.path.realpath(got["cwd"]) == os.path.realpath(workdir), host
    time.sleep(1.0)
    assert sorted(os.listdir(marker)) == []
    for where in (tmp_path, Path("/tmp"), Path("/root"), Path("/"), Path.cwd()):
        assert not list(where.glob("pwned*")), where
    assert not list(tmp_path.rglob("pwned*"))
