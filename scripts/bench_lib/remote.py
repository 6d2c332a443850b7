"""Figure 5: the remote poll cycle over real SSH to network-namespace hosts.

Uses ``tests/netns.py`` (sshd per namespace) and ``fleetd.hosts.ssh.SshHost``
directly: one cycle is ``observe`` on every host at once, each with an
``ObserveRequest`` sized like a real roster (one tmux socket, one heartbeat file
per agent). Round trips are counted twice: by SshHost (exec channels opened) and
by sshd itself (sessions in its log).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_lib.common import Stats

SOCKET = "fleetd"


@dataclass
class RemoteResult:
    hosts: int
    agents: int
    cycle: Stats
    round_trips_per_host_cycle: float  # counted by SshHost
    sshd_sessions_per_host_cycle: float  # counted by sshd
    panes_seen: int


def available(repo: Path) -> str | None:
    """None if the figure can run, else why not."""
    if not (repo / "fleetd/hosts/ssh.py").exists() or not (repo / "tests/netns.py").exists():
        return "fleetd/hosts/ssh.py or tests/netns.py missing"
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not os.path.exists("/usr/sbin/sshd"):
        return "needs /usr/sbin/sshd"
    return None


def _populate(host: Any, agents: int) -> list[str]:
    """A tmux server on the host's own TMUX_TMPDIR with ``agents`` tagged panes
    (one tmux invocation), and one heartbeat file per agent."""
    hb_dir = Path(host.dir) / "hb"
    hb_dir.mkdir(exist_ok=True)
    argv = ["tmux", "-u", "-L", SOCKET]
    files = []
    now = time.time()
    for i in range(agents):
        name = f"{host.name}-a{i:02d}"
        cmd = "new-session -d -s fleet" if i == 0 else "new-window -t fleet"
        argv += [*cmd.split(), "-n", name, "sleep", "100000", ";"]
        argv += ["set-option", "-p", "@fleetd_agent", name, ";"]
        hb = hb_dir / f"{name}.hb"
        hb.write_text(f"ts={now}\npid={1000 + i}\nstatus=working\n")
        files.append(str(hb))
    env = {**os.environ, "TMUX_TMPDIR": str(host.tmux_tmpdir)}
    env.pop("TMUX", None)
    subprocess.run(argv[:-1], env=env, check=True, timeout=60, capture_output=True)
    return files


async def _cycles(hosts: list[Any], requests: list[Any], cycles: int) -> tuple[list[float], int]:
    samples = []
    panes = 0
    for _ in range(cycles):
        t = time.perf_counter()
        snaps = await asyncio.gather(*(h.observe(r) for h, r in zip(hosts, requests, strict=True)))
        samples.append(time.perf_counter() - t)
        panes = sum(len(s.panes[SOCKET].panes) for s in snaps)
    return samples, panes


def remote_cycle(configs: list[tuple[int, int]], cycles: int) -> list[RemoteResult]:
    """For each (hosts, agents per host): a fresh lab, ``cycles`` timed cycles."""
    from fleetd.hosts.base import ObserveRequest
    from tests.netns import NetnsLab

    results = []
    for n_hosts, n_agents in configs:
        lab = NetnsLab()
        try:
            lab.create(n_hosts)
            requests = []
            for h in lab.hosts:
                files = _populate(h, n_agents)
                requests.append(
                    ObserveRequest(sockets=(SOCKET,), files=tuple(files), health_path="/")
                )
            results.append(asyncio.run(_measure(lab, requests, n_agents, cycles)))
        finally:
            lab.teardown()
    return results


async def _measure(lab: Any, requests: list[Any], n_agents: int, cycles: int) -> RemoteResult:
    from fleetd.config import HostSpec
    from fleetd.hosts.ssh import SshHost

    hosts = [SshHost(HostSpec(**h.host_spec_dict(connect_timeout=10.0))) for h in lab.hosts]
    try:
        await asyncio.gather(*(h.ensure_connected() for h in hosts))
        await _cycles(hosts, requests, 2)  # warm up: first exec on each connection
        rt0 = [h.round_trips for h in hosts]
        ss0 = [h.sshd_sessions() for h in lab.hosts]
        samples, panes = await _cycles(hosts, requests, cycles)
        await asyncio.sleep(0.2)  # let sshd flush its log lines
        rt = sum(h.round_trips - r for h, r in zip(hosts, rt0, strict=True))
        ss = sum(h.sshd_sessions() - s for h, s in zip(lab.hosts, ss0, strict=True))
    finally:
        await asyncio.gather(*(h.close() for h in hosts), return_exceptions=True)
    stats = Stats.of(samples)
    assert stats is not None
    n = len(hosts) * cycles
    return RemoteResult(len(hosts), n_agents, stats, rt / n, ss / n, panes)
