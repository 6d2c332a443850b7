"""Federated mode: a fleetd inside a network-namespace host, seen and backed up by the hub.

The remote fleetd runs inside the namespace (``ip netns exec``) with its own
runtime directory and the host's TMUX_TMPDIR (the one sshd gives SSH sessions),
so the hub's agentless fallback sees the same tmux server. Everything started
is killed by pid in ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetd.control.client import Client
from tests.harness import AGENT, PY, wait_for
from tests.integration.test_remote import DEFAULTS, Hub, agent_procs, kill_remote_tmux, toml, uniq
from tests.netns import NetnsHost, NetnsLab, require_netns

pytestmark = pytest.mark.root


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    require_netns()
    lab = NetnsLab()
    try:
        lab.create(1)
        yield lab
    finally:
        lab.teardown()


class RemoteFleetd:
    def __init__(self, h: NetnsHost, root: Path, sock: str, agents: list[str]) -> None:
        self.h = h
        self.dir = root / "remote"
        self.dir.mkdir()
        self.roster = self.dir / "fleetd.toml"
        self.socket = self.dir / "run" / "control.sock"
        self.pidfile = self.dir / "restarted.pid"
        self.log = self.dir / "fleetd.log"
        self.pids: list[int] = []
        hb = self.dir / "hb"
        hb.mkdir()
        lines = ["[settings]"]
        settings = {
            "state_dir": str(self.dir / "state"),
            "runtime_dir": str(self.dir / "run"),
            "poll_interval": "1s",
            "journal": False,
        }
        lines += [f"{k} = {toml(v)}" for k, v in settings.items()]
        lines.append("\n[defaults]")
        lines += [f"{k} = {toml(v)}" for k, v in {**DEFAULTS, "tmux_socket": sock}.items()]
        self.agent_body = {
            "command": AGENT,
            "workdir": str(self.dir),
            "heartbeat_file": str(hb / "{agent}.hb"),
            "tmux_socket": sock,
        }
        for name in agents:
            lines.append(f'\n[agents."{name}"]')
            lines += [f"{k} = {toml(v)}" for k, v in self.agent_body.items()]
        self.roster.write_text("\n".join(lines) + "\n")
        # What the hub runs over SSH to restart it (inside the namespace, via sshd).
        self.restart = self.dir / "restart.sh"
        self.restart.write_text(
            "#!/bin/sh\n"
            f"setsid {PY} -m fleetd --config {self.roster} </dev/null >>{self.log} 2>&1 &\n"
            f"echo $! > {self.pidfile}\n"
        )
        self.restart.chmod(0o755)

    def start(self) -> None:
        env = {**os.environ, "TMUX_TMPDIR": str(self.h.tmux_tmpdir)}
        env.pop("TMUX", None)
        with self.log.open("ab") as logf:
            proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.h.netns,
                    PY,
                    "-m",
                    "fleetd",
                    "--config",
                    str(self.roster),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.proc = proc
        self.pids.append(proc.pid)
        wait_for(self.answers, 20, what="remote fleetd")

    def answers(self) -> bool:
        try:
            self.call("ping")
        except Exception:
            return False
        return True

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        with Client(self.socket, timeout=10) as c:
            return c.call(cmd, args)

    def all_pids(self) -> list[int]:
        pids = list(self.pids)
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(self.pidfile.read_text().strip()))
        return pids

    def cleanup(self) -> None:
        for pid in self.all_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(5)


def test_federated_forward_restart_and_partition(lab: NetnsLab, tmp_path: Path) -> None:
    h = lab.hosts[0]
    sock = uniq("fed")
    name = uniq("fa")
    remote = RemoteFleetd(h, tmp_path, sock, [name])
    (tmp_path / "hub").mkdir()
    hub = Hub(tmp_path / "hub", lab)
    try:
        remote.start()
        rpid = wait_for(
            lambda: (a := remote.call("show", {"agent": name}))["state"] == "RUNNING" and a["pid"],
            20,
            what="remote agent running",
        )
        hub.add_host(
            h,
            mode="federated",
            remote_socket=str(remote.socket),
            remote_restart_command=[str(remote.restart)],
        )
        hub.agents[name] = {**remote.agent_body, "host": h.name}
        hub.start()

        def row() -> dict[str, Any]:
            return next(r for r in hub.call("ps")["agents"] if r["name"] == name)

        r = wait_for(lambda: (x := row())["managed_by"] == "remote" and x, 20, what="remote row")
        assert r["host"] == h.name and r["pid"] == rpid and r["state"] == "RUNNING"
        hrow = hub.host_row(h.name)
        assert hrow["mode"] == "federated" and hrow["remote_fleetd"] == "up"

        # Commands are forwarded; the remote's events flow into the hub's bus.
        hub.call("restart", {"agent": name})
        new = wait_for(
            lambda: (x := row())["pid"] not in (None, rpid) and x["state"] == "RUNNING" and x,
            30,
            what="restart forwarded",
        )
        wait_for(
            lambda: [
                e
                for e in hub.events(name, ["agent_started"])
                if e["data"].get("origin") == "remote"
            ],
            15,
            what="followed agent_started",
        )
        assert hub.call("logs", {"agent": name})["agent"] == name

        # The remote fleetd dies: one alert, restarted through SSH, no duplicate agent.
        os.kill(remote.proc.pid, signal.SIGKILL)
        remote.proc.wait(5)
        down = hub.wait_event("host_fleetd_down", timeout=20)
        assert down[0]["alert"] and down[0]["host"] == h.name
        hub.wait_event("host_fleetd_restart", timeout=20)
        hub.wait_event("host_fleetd_up", timeout=30)
        assert len(hub.events(kinds=["host_fleetd_down"])) == 1
        wait_for(remote.answers, 10, what="restarted remote fleetd")
        assert remote.call("show", {"agent": name})["pid"] == new["pid"]  # adopted
        assert len(agent_procs(name)) == 1

        # Partition: the remote fleetd keeps supervising; the hub only sees UNKNOWN.
        lab.partition(0, "link")
        wait_for(lambda: hub.host_row(h.name)["state"] == "unreachable", 20, what="down")
        h.ns("kill", "-9", str(new["pid"]))
        again = wait_for(
            lambda: (
                (a := remote.call("show", {"agent": name}))["pid"] not in (None, new["pid"])
                and a["state"] == "RUNNING"
                and a
            ),
            30,
            what="remote fleetd respawned its agent during the partition",
        )
        lab.heal(0)
        wait_for(
            lambda: (x := row())["managed_by"] == "remote" and x["pid"] == again["pid"] and x,
            30,
            what="hub sees the respawned agent after heal",
        )
        hub_started = [
            e for e in hub.events(name, ["agent_started"]) if e["data"].get("origin") != "remote"
        ]
        assert hub_started == [], "the hub never spawned while the remote fleetd answered"
        assert len(agent_procs(name)) == 1
    finally:
        lab.heal(0)
        hub.cleanup()
        remote.cleanup()
        kill_remote_tmux(h, sock)
