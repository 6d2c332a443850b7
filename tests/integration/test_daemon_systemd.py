"""fleetd as a service: real journald, a real NOTIFY_SOCKET receiver, signals, deadman."""

from __future__ import annotations

import functools
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import require_binary
from tests.harness import Fleet, fleet, wait_for
from tests.journald import Journald, running_journald

__all__ = ["fleet"]


@pytest.fixture
def journald() -> Iterator[Journald]:
    with running_journald() as j:
        yield j


@pytest.fixture(autouse=True)
def _tmux() -> None:
    require_binary("tmux")


def journal_fleet(fleet: Fleet, journald: Journald) -> Fleet:
    fleet.settings["journal"] = True
    fleet.settings["journal_socket"] = journald.socket_path
    return fleet


def test_journal_gets_alerts_with_fields_once_per_incident(
    fleet: Fleet, journald: Journald
) -> None:
    journal_fleet(fleet, journald)
    fleet.defaults["intensity"] = {"max_restarts": 2, "window": "60s"}
    fleet.defaults["backoff"] = {"initial": "0.2s", "factor": 2.0, "cap": "1s", "jitter": 0.0}
    fleet.add_agent("victim")
    fleet.add_agent("sleepy", ["--hang-after", "1.5", "--spread", "0"], restart="never")
    fleet.add_agent("crasher", ["--crash-after", "0", "--exit-code", "4"])
    fleet.start()
    pid = fleet.wait_state("victim", "RUNNING")["pid"]
    wait_for(
        lambda: "step 3" in fleet.tmux("capture-pane", "-p", "-t", "fleet:victim").stdout,
        what="victim output",
    )
    os.kill(pid, signal.SIGKILL)

    dead = journald.wait_for("FLEETD_EVENT=agent_dead", "FLEETD_AGENT=victim")
    assert len(dead) == 1
    d = dead[0]
    assert d["PRIORITY"] == "3" and d["FLEETD_SIGNAL"] == "9"
    assert d["FLEETD_HOST"] == "local" and d["FLEETD_INCIDENT"]
    assert "victim died" in d["MESSAGE"]
    # The scrollback is a multi-line field; it must arrive exactly as captured.
    forensics = fleet.call("logs", {"agent": "victim"})["forensics"][0]
    assert "\n" in forensics["scrollback"]
    assert d["FLEETD_SCROLLBACK"] == forensics["scrollback"]
    recovered = journald.wait_for("FLEETD_EVENT=agent_recovered", "FLEETD_AGENT=victim")
    assert len(recovered) == 1
    assert recovered[0]["PRIORITY"] == "5"
    assert recovered[0]["FLEETD_INCIDENT"] == d["FLEETD_INCIDENT"]

    hung = journald.wait_for("FLEETD_EVENT=agent_hung", "FLEETD_AGENT=sleepy")
    assert len(hung) == 1 and hung[0]["PRIORITY"] == "3"
    assert "sleepy is hung" in hung[0]["MESSAGE"]

    fatal = journald.wait_for("FLEETD_EVENT=agent_fatal", "FLEETD_AGENT=crasher", timeout=20)
    assert len(fatal) == 1 and fatal[0]["PRIORITY"] == "2" and fatal[0]["FLEETD_STATE"] == "FATAL"
    deaths = journald.query("FLEETD_EVENT=agent_dead", "FLEETD_AGENT=crasher")
    assert [e["PRIORITY"] for e in deaths] == ["3"] + ["4"] * (len(deaths) - 1)
    assert all(e["FLEETD_EXIT_STATUS"] == "4" for e in deaths)
    assert len({e["FLEETD_INCIDENT"] for e in deaths}) == 1
    # Everything is also in the store, with the same ids.
    ids = {e["id"] for e in fleet.events()}
    assert {int(e["FLEETD_EVENT_ID"]) for e in journald.query()} <= ids


def test_stopping_fleetd_keeps_agents_and_repeats_no_alert(
    fleet: Fleet, journald: Journald
) -> None:
    journal_fleet(fleet, journald)
    fleet.defaults["recovery_settle"] = "4s"
    fleet.add_agent("steady")
    fleet.add_agent("victim")
    fleet.start()
    pids = {n: fleet.wait_state(n, "RUNNING")["pid"] for n in ("steady", "victim")}
    os.kill(pids["victim"], signal.SIGKILL)
    journald.wait_for("FLEETD_EVENT=agent_dead", "FLEETD_AGENT=victim")
    fleet.wait_state("victim", "RUNNING")
    # The incident is still open (recovery_settle has not passed): fleetd dies now.
    assert fleet.stop(signal.SIGKILL) == -signal.SIGKILL
    survivors = dict(fleet.pane_pids())
    assert psutil.pid_exists(pids["steady"]) and survivors["steady"] == pids["steady"]
    fleet.start()
    for n, pid in survivors.items():
        assert fleet.wait_state(n, "RUNNING")["pid"] == pid
    journald.wait_for("FLEETD_EVENT=agent_recovered", "FLEETD_AGENT=victim", timeout=20)
    # SIGTERM: a clean stop, agents untouched, then adoption again.
    assert fleet.stop(signal.SIGTERM) == 0
    assert all(psutil.pid_exists(p) for p in survivors.values())
    fleet.start()
    for n, pid in survivors.items():
        assert fleet.wait_state(n, "RUNNING")["pid"] == pid
    alerts = [e for e in journald.query("FLEETD_AGENT=victim") if int(e["PRIORITY"]) <= 3]
    assert len(alerts) == 1, [e["MESSAGE"] for e in alerts]
    assert len(journald.query("FLEETD_EVENT=agent_recovered", "FLEETD_AGENT=victim")) == 1
    assert not journald.query("FLEETD_AGENT=steady", "PRIORITY=3")


def test_tmux_server_killed_is_one_host_incident(fleet: Fleet, journald: Journald) -> None:
    journal_fleet(fleet, journald)
    names = ["w1", "w2", "w3"]
    for n in names:
        fleet.add_agent(n)
    fleet.start()
    old = {n: fleet.wait_state(n, "RUNNING")["pid"] for n in names}
    server = fleet.tmux_server_pid()
    assert server is not None
    os.kill(server, signal.SIGKILL)
    def restored(n: str) -> bool:
        a = fleet.agent(n)
        return bool(a["state"] == "RUNNING" and a["pid"] != old[n])

    for n in names:
        wait_for(functools.partial(restored, n), timeout=30, what=f"{n} restored")
    gone = journald.wait_for("FLEETD_EVENT=host_tmux_gone")
    assert len(gone) == 1 and gone[0]["PRIORITY"] == "3"
    alerts = [e for e in journald.query() if int(e["PRIORITY"]) <= 3]
    assert [e["FLEETD_EVENT"] for e in alerts] == ["host_tmux_gone"]
    dead = journald.query("FLEETD_EVENT=agent_dead")
    assert len(dead) == 3 and all(e["PRIORITY"] == "4" for e in dead)
    journald.wait_for("FLEETD_EVENT=host_recovered", timeout=20)


# --- sd_notify ------------------------------------------------------------------


class NotifyReceiver:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.got: list[tuple[float, str]] = []

    def drain(self, wait: float = 0.0) -> list[tuple[float, str]]:
        end = time.monotonic() + wait
        while True:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.sock.recv(65536).decode()
            except (TimeoutError, BlockingIOError):
                if time.monotonic() >= end:
                    return self.got
                continue
            self.got.append((time.monotonic(), data))

    def lines(self) -> list[str]:
        return [d for _, d in self.got]

    def wait_for(self, text: str, timeout: float = 20.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, d in self.got:
                if text in d.split("\n"):
                    return t
            self.drain(0.1)
        raise AssertionError(f"no {text!r} in {self.lines()}")

    def pings(self, since: float, until: float) -> int:
        return sum(1 for t, d in self.got if since <= t < until and "WATCHDOG=1" in d)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyReceiver]:
    r = NotifyReceiver(tmp_path / f"notify-{uuid.uuid4().hex[:6]}")
    try:
        yield r
    finally:
        r.sock.close()


def test_ready_after_adoption_watchdog_follows_progress(
    fleet: Fleet, notify: NotifyReceiver
) -> None:
    fleet.settings["poll_interval"] = "0.5s"
    fleet.add_agent("a1")
    fleet.start()
    pid = fleet.wait_state("a1", "RUNNING")["pid"]
    fleet.stop()
    fleet.extra_env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
    proc = fleet.start(wait=False)
    t_ready = notify.wait_for("READY=1")
    # At READY the agent is already adopted and the socket answers.
    assert fleet.agent("a1")["pid"] == pid and fleet.state("a1") == "RUNNING"
    assert any(e["kind"] == "agent_adopted" for e in fleet.events("a1"))
    assert any(
        line.startswith("STATUS=") and "1 running" in line
        for d in notify.lines()
        for line in d.split("\n")
    )
    # Pings at about half the interval (1 s) while the loop makes progress.
    notify.drain(4.5)
    t0 = t_ready + 0.5
    n = notify.pings(t0, t0 + 4.0)
    assert 2 <= n <= 6, notify.lines()
    # Wedge the supervision loop: tmux stops answering, cycles cannot complete.
    server = fleet.tmux_server_pid()
    assert server is not None
    os.kill(server, signal.SIGSTOP)
    try:
        t_stop = time.monotonic()
        notify.drain(4.0)
        assert notify.pings(t_stop + 1.2, t_stop + 4.0) == 0, notify.lines()
    finally:
        os.kill(server, signal.SIGCONT)
    t_cont = time.monotonic()
    notify.drain(15.0 if notify.pings(t_cont, t_cont + 1e9) == 0 else 0.1)
    wait_for(
        lambda: notify.drain(0.2) and notify.pings(t_cont, time.monotonic() + 1) > 0,
        timeout=20,
        what="pings to resume",
    )
    # Reload: RELOADING with MONOTONIC_USEC, then READY.
    proc.send_signal(signal.SIGHUP)
    t_hup = time.monotonic()
    notify.drain(2.0)
    reload_msgs = [d for t, d in notify.got if t >= t_hup]
    joined = "\n".join(reload_msgs)
    assert "RELOADING=1" in joined and "MONOTONIC_USEC=" in joined
    i_reload = next(i for i, d in enumerate(reload_msgs) if "RELOADING=1" in d)
    assert any("READY=1" in d for d in reload_msgs[i_reload:])
    # SIGTERM: STOPPING, and the agent stays.
    assert fleet.stop(signal.SIGTERM) == 0
    notify.drain(0.5)
    assert any("STOPPING=1" in d for d in notify.lines())
    assert psutil.pid_exists(pid), '\n'.join(map(str, fleet.store_events()))


def test_no_pings_for_another_watchdog_pid(fleet: Fleet, notify: NotifyReceiver) -> None:
    fleet.settings["poll_interval"] = "0.5s"
    fleet.add_agent("a1")
    fleet.extra_env = {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "1000000",
        "WATCHDOG_PID": "1",
    }
    fleet.start(wait=False)
    notify.wait_for("READY=1")
    notify.drain(3.0)
    assert not any("WATCHDOG=1" in d for d in notify.lines())


def test_agents_do_not_inherit_notify_socket(fleet: Fleet, notify: NotifyReceiver) -> None:
    fleet.add_agent("a1")
    fleet.extra_env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "5000000"}
    fleet.start(wait=False)
    notify.wait_for("READY=1")
    pid = fleet.wait_state("a1", "RUNNING")["pid"]
    env = psutil.Process(pid).environ()
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env
    assert env["FLEETD_AGENT"] == "a1"


# --- deadman -----------------------------------------------------------------------


def test_deadman_passes_when_healthy_and_fails_when_gone_or_stale(
    fleet: Fleet, journald: Journald
) -> None:
    fleet.add_agent("a1")
    fleet.start()
    ok = fleet.ctl("deadman", "--max-age", "10s")
    assert ok.returncode == 0 and "fleetd is alive" in ok.stdout, ok.stderr
    # Stuck: the process exists but neither beats nor answers.
    assert fleet.proc is not None
    fleet.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.5)
        stale = fleet.ctl("deadman", "--max-age", "2s", "--ping-timeout", "1s")
        assert stale.returncode == 1
        assert "old (limit 2s" in stale.stderr and "did not answer" in stale.stderr, stale.stderr
    finally:
        fleet.proc.send_signal(signal.SIGCONT)
    fleet.stop(signal.SIGKILL)
    gone = fleet.ctl("deadman", "--max-age", "60s", "--journal-socket", journald.socket_path)
    assert gone.returncode == 1
    assert "not running" in gone.stderr or "no process" in gone.stderr, gone.stderr
    crit = journald.wait_for("FLEETD_EVENT=fleetd_deadman")
    assert len(crit) == 1 and crit[0]["PRIORITY"] == "2"
