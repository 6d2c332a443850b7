"""Local supervision end to end: real fleetd, real tmux, real agents, real socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import require_binary, require_root
from tests.harness import Fleet, fleet, wait_for

__all__ = ["fleet"]


@pytest.fixture(autouse=True)
def _tmux() -> None:
    require_binary("tmux")


def test_kill_9_agent_is_respawned_with_forensics(fleet: Fleet) -> None:
    fleet.add_agent("worker")
    fleet.start()
    first = fleet.wait_state("worker", "RUNNING")
    pid = first["pid"]
    # Let it print a few lines so forensics have something to show.
    wait_for(
        lambda: "step 2" in fleet.tmux("capture-pane", "-p", "-t", "fleet:worker").stdout,
        what="agent output",
    )
    os.kill(pid, signal.SIGKILL)
    again = wait_for(
        lambda: (a := fleet.agent("worker"))["pid"] not in (None, pid) and a, what="respawn"
    )
    assert again["pid"] != pid
    dead = fleet.wait_event("agent_dead", "worker")[0]
    assert dead["data"]["signal"] == signal.SIGKILL
    assert dead["alert"] is True
    started = fleet.wait_event("agent_started", "worker", count=2)
    assert started[-1]["id"] > dead["id"]
    logs = fleet.call("logs", {"agent": "worker"})["forensics"]
    assert logs, "forensics recorded"
    f = logs[0]
    assert f["signal"] == signal.SIGKILL and f["pid"] == pid
    assert "[worker] step 2" in f["scrollback"]
    assert f"pid={pid}" in (f["heartbeat"] or "")
    # fleetctl logs shows the same to a person.
    out = fleet.ctl("logs", "worker")
    assert out.returncode == 0 and "signal 9" in out.stdout and "step 2" in out.stdout
    # exactly one live copy
    wait_for(lambda: len(fleet.processes_of("worker")) == 1, what="one copy")


def test_hung_agent_is_killed_at_deadline_and_respawned(fleet: Fleet) -> None:
    fleet.add_agent("sleepy", ["--hang-after", "1", "--spread", "0"])
    fleet.start()
    a = fleet.wait_state("sleepy", "RUNNING")
    pid = a["pid"]
    hung = fleet.wait_event("agent_hung", "sleepy", timeout=15)[0]
    # heartbeat_interval 0.5s x factor 3: the last beat is 1.5 s old at the deadline.
    assert 1.4 <= hung["data"]["heartbeat_age"] < 2.5
    assert (
        not psutil.pid_exists(pid)
        or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        or wait_for(lambda: not psutil.pid_exists(pid), 10, what="hung pid gone")
    )
    wait_for(
        lambda: (x := fleet.agent("sleepy"))["pid"] not in (None, pid) and x,
        what="respawn after hang",
    )
    kinds = [e["kind"] for e in fleet.events("sleepy")]
    assert kinds.index("agent_hung") < kinds.index("agent_killed")
    logs = fleet.call("logs", {"agent": "sleepy"})["forensics"]
    assert any(f["reason"].startswith("hung") and "never comes" in f["scrollback"] for f in logs)


def test_crash_loop_goes_fatal_then_restart_revives(fleet: Fleet) -> None:
    fleet.defaults["intensity"] = {"max_restarts": 3, "window": "60s"}
    fleet.defaults["backoff"] = {"initial": "0.2s", "factor": 2.0, "cap": "1s", "jitter": 0.0}
    fleet.add_agent("crasher", ["--crash-after", "0", "--exit-code", "7"])
    fleet.start()
    fleet.wait_state("crasher", "FATAL", timeout=30)
    fatal = fleet.events("crasher", ["agent_fatal"])
    assert len(fatal) == 1 and fatal[0]["alert"] is True
    backoffs = [e["data"]["delay"] for e in fleet.events("crasher", ["agent_backoff"])]
    assert backoffs == sorted(backoffs) and len(backoffs) >= 2, backoffs
    assert backoffs[0] == pytest.approx(0.2, abs=0.01)
    starts = len(fleet.events("crasher", ["agent_started"]))
    time.sleep(2)  # FATAL means no more restarts
    assert len(fleet.events("crasher", ["agent_started"])) == starts
    # only one alert opened the incident; later deaths are part of it
    dead = fleet.events("crasher", ["agent_dead"])
    assert dead[0]["alert"] is True and not any(e["alert"] for e in dead[1:])
    assert all(e["data"]["exit_status"] == 7 for e in dead)
    out = fleet.ctl("restart", "crasher")
    assert out.returncode == 0, out.stderr
    wait_for(
        lambda: len(fleet.events("crasher", ["agent_started"])) > starts, what="revived by restart"
    )


def test_fleetd_kill_9_then_restart_adopts_everything(fleet: Fleet) -> None:
    for n in ("a1", "a2", "a3"):
        fleet.add_agent(n)
    fleet.start()
    pids = {n: fleet.wait_state(n, "RUNNING")["pid"] for n in ("a1", "a2", "a3")}
    assert fleet.stop(signal.SIGKILL) == -signal.SIGKILL
    # agents survive fleetd's death
    assert all(psutil.pid_exists(p) for p in pids.values())
    fleet.start()
    for n, pid in pids.items():
        a = fleet.wait_state(n, "RUNNING")
        assert a["pid"] == pid, f"{n} was respawned instead of adopted"
    adopted = fleet.events(kinds=["agent_adopted"])
    assert {e["agent"] for e in adopted} == set(pids)
    starts = fleet.events(kinds=["agent_started"])
    assert len(starts) == 3, "nothing started a second time"
    for n in pids:
        assert len(fleet.processes_of(n)) == 1


def test_sigterm_leaves_agents_running(fleet: Fleet) -> None:
    fleet.add_agent("keep")
    fleet.start()
    pid = fleet.wait_state("keep", "RUNNING")["pid"]
    t0 = time.monotonic()
    assert fleet.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 10
    assert psutil.pid_exists(pid)
    assert not fleet.socket_path.exists()


def test_concurrent_restarts_make_one_restart(fleet: Fleet) -> None:
    fleet.add_agent("solo")
    fleet.start()
    fleet.wait_state("solo", "RUNNING")
    before = len(fleet.events("solo", ["agent_started"]))
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(fleet.ctl("restart", "solo")))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    fleet.wait_state("solo", "RUNNING")
    time.sleep(1.0)
    assert len(fleet.events("solo", ["agent_started"])) == before + 1
    assert len(fleet.processes_of("solo")) == 1


def test_stop_start_pause_resume(fleet: Fleet) -> None:
    fleet.add_agent("ctl")
    fleet.start()
    pid = fleet.wait_state("ctl", "RUNNING")["pid"]
    assert fleet.ctl("pause", "ctl").returncode == 0
    assert fleet.state("ctl") == "PAUSED"
    os.kill(pid, signal.SIGKILL)
    time.sleep(2.0)  # paused: no restart, no alert
    assert fleet.state("ctl") == "PAUSED"
    assert not fleet.events("ctl", ["agent_dead"])
    assert fleet.ctl("resume", "ctl").returncode == 0
    fleet.wait_state("ctl", "RUNNING", "STARTING")
    b = fleet.wait_state("ctl", "RUNNING")
    assert fleet.ctl("stop", "ctl").returncode == 0
    assert fleet.state("ctl") == "STOPPED"
    wait_for(lambda: not fleet.processes_of("ctl"), what="stopped agent gone")
    assert b["pid"] is not None
    # an operator stop survives a fleetd restart
    fleet.stop()
    fleet.start()
    assert fleet.state("ctl") == "STOPPED"
    assert fleet.ctl("start", "ctl").returncode == 0
    fleet.wait_state("ctl", "RUNNING")
    cmds = fleet.events(kinds=["operator_command"])
    assert [e["data"]["cmd"] for e in cmds] == ["pause", "resume", "stop", "start"]
    assert all(e["data"]["uid"] == os.geteuid() for e in cmds)


def test_heartbeat_files_torn_empty_future_never_false_dead(fleet: Fleet) -> None:
    hb = fleet.hb / "quiet.hb"
    # An agent that never writes its own heartbeat; the test writes it instead.
    fleet.add_agent("quiet", ["--no-heartbeat"], start_grace="2s")
    fleet.start()
    from fleetd.heartbeat import format_heartbeat

    def beat(text: str) -> None:
        tmp = hb.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, hb)

    pid = wait_for(lambda: fleet.agent("quiet")["pid"], what="pid")
    t_end = time.monotonic() + 4.0
    i = 0
    while time.monotonic() < t_end:
        good = format_heartbeat(time.time(), pid, "working")
        bad = ["", "ts=2026-", good[: len(good) // 2], "garbage\n", "\n"][i % 5]
        beat(good)
        time.sleep(0.2)
        beat(bad)  # torn / empty / invalid in between good beats
        time.sleep(0.2)
        i += 1
    beat(format_heartbeat(time.time(), pid, "working"))
    assert fleet.state("quiet") == "RUNNING"
    assert not fleet.events("quiet", ["agent_hung", "agent_dead"])
    # A future-dated beat that never changes does not keep the agent alive forever.
    beat(format_heartbeat(time.time() + 3600, pid, "working"))
    fleet.wait_event("agent_hung", "quiet", timeout=15)


def test_socket_rejects_bad_requests_and_keeps_serving(fleet: Fleet) -> None:
    fleet.add_agent("x1")
    fleet.start()

    def raw(data: bytes) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(fleet.socket_path))
            s.sendall(data)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return dict(json.loads(buf))

    assert raw(b"not json\n")["error"]["code"] == "request.invalid"  # type: ignore[index]
    assert raw(b'{"v":99,"cmd":"ps"}\n')["error"]["code"] == "request.unsupported_version"  # type: ignore[index]
    assert raw(b'{"v":1,"id":3,"cmd":"nope"}\n')["error"]["code"] == "request.unknown_command"  # type: ignore[index]
    r = raw(b'{"v":1,"id":4,"cmd":"show","args":{"agent":"ghost"}}\n')
    assert r["id"] == 4 and r["error"]["code"] == "agent.unknown"  # type: ignore[index]
    big = b'{"v":1,"cmd":"ps","args":{"x":"' + b"a" * 200_000 + b'"}}\n'
    assert raw(big)["error"]["code"] == "request.too_large"  # type: ignore[index]
    r = raw(b'{"v":1,"id":5,"cmd":"restart","args":{"agent":"x1","rm":"-rf"}}\n')
    assert r["error"]["code"] == "request.bad_arguments"  # type: ignore[index]
    # a client that connects and says nothing is timed out, others are still served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(fleet.socket_path))
        assert fleet.call("ping")["pid"] > 0
    assert fleet.call("ps")["agents"][0]["name"] == "x1"
    # fleetctl prints the code and exits non-zero
    out = fleet.ctl("show", "ghost")
    assert out.returncode == 1 and "[agent.unknown]" in out.stderr
    # the socket is not world-writable
    assert fleet.socket_path.stat().st_mode & 0o777 == 0o660


def test_mutating_command_refused_to_other_uid(fleet: Fleet) -> None:
    require_root()  # to act as another uid
    # The runtime directory must be reachable for the other uid (pytest's is 0700).
    fleet.run_dir = Path(tempfile.mkdtemp(prefix="fleetd-perm-"))
    fleet.run_dir.chmod(0o755)
    fleet.add_agent("guarded")
    fleet.start()
    fleet.wait_state("guarded", "RUNNING")
    os.chmod(fleet.socket_path, 0o666)
    code = (
        "import os, json, socket; from fleetd.control.client import Client\n"
        "from fleetd.errors import FleetError\n"
        "os.setuid(65534)\n"
        f"c=Client({str(fleet.socket_path)!r})\n"
        "print(len(c.call('ps')['agents']))\n"
        "try:\n c.call('stop',{'agent':'guarded'})\n"
        "except FleetError as e: print(e.code)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=fleet.env,
    )
    assert out.stdout.split() == ["1", "request.permission_denied"], out.stderr
    assert fleet.state("guarded") == "RUNNING"


def test_invalid_roster_refused_at_start_and_reload(fleet: Fleet, tmp_path: Path) -> None:
    fleet.add_agent("ok")
    fleet.write_roster()
    good = fleet.roster.read_text()
    bad = good.replace('[agents."ok"]', '[agents."bad;name"]')
    fleet.roster.write_text(bad)

    def fleetd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fleetd", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=fleet.env,
            check=False,
        )

    res = fleetd("--config", str(fleet.roster))
    assert res.returncode == 2
    assert str(fleet.roster) in res.stderr and "agents.bad;name" in res.stderr
    assert "letters, digits" in res.stderr
    chk = fleetd("--check", str(fleet.roster))
    assert chk.returncode == 2
    fleet.roster.write_text(good)
    fleet.start()
    pid = fleet.wait_state("ok", "RUNNING")["pid"]
    fleet.roster.write_text(
        good + "\n[agents.new]\nrestart = 5\n"  # no command, and restart is not a policy
    )
    out = fleet.ctl("reload")
    assert out.returncode == 2 and "agents.new" in out.stderr
    assert fleet.agent("ok")["pid"] == pid  # old roster still in force
    assert fleet.events(kinds=["reload_failed"])
    # a valid reload adds, restarts and removes
    fleet.add_agent("extra")
    fleet.write_roster()
    out = fleet.ctl("reload")
    assert out.returncode == 0, out.stderr
    fleet.wait_state("extra", "RUNNING")
    del fleet.agents["extra"]
    fleet.write_roster()
    assert fleet.ctl("reload").returncode == 0
    assert [a["name"] for a in fleet.call("ps")["agents"]] == ["ok"]
    wait_for(lambda: not fleet.processes_of("extra"), what="removed agent stopped")


def test_reload_moving_an_agent_to_another_window_and_socket(fleet: Fleet) -> None:
    # Pane ids are per tmux server: after a move the agent must get a pane of its own
    # there, never the pane that happens to carry the same id (another agent's).
    fleet.add_agent("mover")
    fleet.add_agent("bystander")
    fleet.start()
    old = fleet.wait_state("mover", "RUNNING")["pid"]
    other = fleet.wait_state("bystander", "RUNNING")["pid"]
    fleet.agents["mover"]["window"] = "elsewhere"
    fleet.agents["mover"]["tmux_socket"] = fleet.socket_name + "b"
    fleet.write_roster()
    out = fleet.ctl("reload")
    assert out.returncode == 0, out.stderr
    moved = wait_for(
        lambda: (a := fleet.agent("mover"))["state"] == "RUNNING" and a["pid"] != old and a,
        what="mover running again",
    )
    assert moved["tmux"]["window"] == "elsewhere"
    assert fleet.agent("bystander")["pid"] == other  # untouched
    assert len(fleet.processes_of("mover")) == 1
    panes = subprocess.run(
        [
            "tmux",
            "-L",
            fleet.socket_name + "b",
            "list-panes",
            "-a",
            "-F",
            "#{window_name} #{@fleetd_agent} #{pane_pid}",
        ],
        capture_output=True,
        text=True,
        env=fleet.env,
        timeout=10,
        check=False,
    ).stdout.split()
    assert panes == ["elsewhere", "mover", str(moved["pid"])]
    subprocess.run(
        ["tmux", "-L", fleet.socket_name + "b", "kill-server"],
        env=fleet.env,
        timeout=10,
        check=False,
    )
