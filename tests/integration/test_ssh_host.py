"""SshHost against real OpenSSH sshd processes in network namespaces.

One lab of three hosts is shared by the module (creating it costs a few seconds);
tests that break a host (partition, wrong key) restore it in ``finally``.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from fleetd import tmux
from fleetd.config import HostSpec
from fleetd.errors import CommandFailed, CommandTimeout, HostKeyRejected, HostUnreachable
from fleetd.hosts.base import Host, ObserveRequest
from fleetd.hosts.ssh import SshHost
from tests.netns import (
    NetnsHost,
    NetnsLab,
    PartitionHow,
    _keygen,
    netns_lab,  # noqa: F401  (fixture)
    running_lab,
    ssh_hosts,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.root
SOCK = "fleetd-it"


@pytest.fixture(scope="module")
def lab() -> Iterator[NetnsLab]:
    with running_lab(3) as lab:
        yield lab


@asynccontextmanager
async def ssh_host(h: NetnsHost, **overrides: object) -> AsyncIterator[SshHost]:
    host = SshHost(HostSpec.model_validate(h.host_spec_dict(**overrides)))
    try:
        yield host
    finally:
        await host.close()


def other_tasks(baseline: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t not in baseline and not t.done()}


async def wait_sessions(h: NetnsHost, at_least: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while h.sshd_sessions() < at_least and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # anything extra would be logged by now
    return h.sshd_sessions()


async def start_agent_pane(host: SshHost, agent: str) -> str:
    res = await host.run(tmux.new_session(SOCK, "fleet", "w1"))
    assert res.ok, res.stderr
    pane = res.stdout.strip()
    assert (await host.run(tmux.tag_pane(SOCK, pane, agent))).ok
    return pane


async def test_observe_three_hosts(lab: NetnsLab) -> None:
    baseline = set(asyncio.all_tasks())
    hosts = [SshHost(HostSpec.model_validate(h.host_spec_dict())) for h in lab.hosts]
    try:
        assert all(isinstance(h, Host) for h in hosts)
        for nh, host in zip(lab.hosts, hosts, strict=True):
            await start_agent_pane(host, f"agent-{nh.name}")
            (nh.dir / "hb").write_bytes(
                f"ts=2026-01-01T00:00:00+00:00\npid=1\nhost={nh.name}\n".encode()
            )
            assert host.state == "connected" and host.connected_since is not None
        requests = [
            ObserveRequest(
                sockets=(SOCK, "never-started"),
                files=(str(nh.dir / "hb"), str(nh.dir / "missing")),
                health_path="/",
            )
            for nh in lab.hosts
        ]
        before = [
            (host.round_trips, nh.sshd_sessions())
            for nh, host in zip(lab.hosts, hosts, strict=True)
        ]
        snaps = await asyncio.gather(
            *(host.observe(req) for host, req in zip(hosts, requests, strict=True))
        )
        for (rt0, sess0), nh, host, snap in zip(before, lab.hosts, hosts, snaps, strict=True):
            assert host.round_trips - rt0 == 1
            assert await wait_sessions(nh, sess0 + 1) - sess0 == 1
            # Each host has its own tmux server (own TMUX_TMPDIR): only its own agent.
            assert list(snap.panes[SOCK].panes) == [f"agent-{nh.name}"]
            pane = snap.panes[SOCK].panes[f"agent-{nh.name}"]
            assert not pane.dead and pane.session == "fleet"
            assert snap.panes["never-started"].server_running is False
            assert snap.files[str(nh.dir / "hb")] == (nh.dir / "hb").read_bytes()
            assert snap.files[str(nh.dir / "missing")] is None
            assert snap.health is not None
            assert 0 < snap.health.disk_free_pct <= 100
            assert 0 < snap.health.mem_available_pct <= 100
            assert snap.health.cpus >= 1 and snap.health.load1 >= 0
            assert abs(snap.wall - time.time()) < 60
            assert snap.errors == ()

        # The pane's process is a group leader: signal it through the host.
        pid = snaps[0].panes[SOCK].panes["agent-h0"].pid
        assert await hosts[0].alive(pid)
        assert await hosts[0].signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while await hosts[0].alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not await hosts[0].alive(pid)
        assert not await hosts[0].signal_group(pid, signal.SIGTERM)
        snap = await hosts[0].observe(requests[0])
        assert snap.panes[SOCK].panes["agent-h0"].dead

        # read_files: one round trip, ~ expanded with the remote HOME.
        rt0 = hosts[1].round_trips
        files = await hosts[1].read_files([str(lab.hosts[1].dir / "hb"), "~/.fleetd-nope"])
        assert hosts[1].round_trips - rt0 == 1
        assert files["~/.fleetd-nope"] is None
        assert hosts[1].expand_path("~/x") == "/root/x"

        # Observe round-trip time on a netns host (printed, not asserted).
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            await hosts[2].observe(requests[2])
            times.append(time.perf_counter() - t0)
        print(
            "\nobserve round trip over ssh (netns): "
            f"median {statistics.median(times) * 1000:.1f} ms, "
            f"max {max(times) * 1000:.1f} ms (n=20)"
        )
    finally:
        for host in hosts:
            if host.connected:
                await host.run(["tmux", "-L", SOCK, "kill-server"])
            await host.close()
    assert other_tasks(baseline) == set()


HOSTILE = [
    "'; touch {d}/pwned-q #",
    "$(touch {d}/pwned-d)",
    "`touch {d}/pwned-b`",
    "#(touch {d}/pwned-h)",
    "a\ntouch {d}/pwned-n",
    "x; touch {d}/pwned-s;",
    '"; touch {d}/pwned-dq; "',
    "&& touch {d}/pwned-a",
    "| touch {d}/pwned-p",
    "*",
    "",
    "-n",
]


async def test_run_hostile_arguments(lab: NetnsLab, tmp_path: Path) -> None:
    args = [a.format(d=tmp_path) for a in HOSTILE]
    async with ssh_host(lab.hosts[0]) as host:
        res = await host.run(["printf", "%s\\0", *args])
        assert res.ok, res.stderr
        assert res.stdout.split("\0")[:-1] == args
        res = await host.run(["sh", "-c", 'for a in "$@"; do printf "[%s]" "$a"; done', "x", *args])
        assert res.stdout == "".join(f"[{a}]" for a in args)
        res = await host.run(["cat"], stdin=b"stdin \x00 bytes")
        assert res.stdout == "stdin \x00 bytes"
        res = await host.run(["sh", "-c", "exit 7"])
        assert res.returncode == 7 and not res.ok
    assert list(tmp_path.glob("pwned*")) == []


async def test_changed_host_key_is_rejected(lab: NetnsLab, tmp_path: Path) -> None:
    h = lab.hosts[1]
    impostor = _keygen(tmp_path / "impostor", "impostor")
    sessions = h.sshd_sessions()
    try:
        lab.write_known_hosts(override={h.name: impostor})
        async with ssh_host(h) as host:
            with pytest.raises(HostKeyRejected) as info:
                await host.ensure_connected()
            print(f"\nchanged key: {info.value.message}")
            assert host.state == "key_rejected"
            assert "known_hosts" in info.value.message
            # In backoff: refused at once, still no command.
            t0 = time.monotonic()
            with pytest.raises(HostKeyRejected):
                await host.observe(ObserveRequest(sockets=(SOCK,), files=()))
            assert time.monotonic() - t0 < 1.0
            assert host.round_trips == 0
        # A host missing from known_hosts is refused the same way.
        lab.known_hosts.write_text("")
        async with ssh_host(h) as host:
            with pytest.raises(HostKeyRejected):
                await host.run(["true"])
        assert h.sshd_sessions() == sessions
    finally:
        lab.write_known_hosts()


@pytest.mark.parametrize("how", ["link", "iptables"])
async def test_partition_detected_and_healed(lab: NetnsLab, how: PartitionHow) -> None:
    h = lab.hosts[2]
    baseline = set(asyncio.all_tasks())
    req = ObserveRequest(sockets=(SOCK,), files=(), health_path="/")
    async with ssh_host(h) as host:
        await host.observe(req)
        spec = host.spec
        bound = spec.keepalive_interval * (spec.keepalive_count + 1) + spec.connect_timeout + 5
        t0 = time.monotonic()
        lab.partition(h.index, how)
        try:
            with pytest.raises(HostUnreachable):
                async with asyncio.timeout(bound + 10):
                    await host.observe(req)
            detected = time.monotonic() - t0
            print(f"\npartition ({how}) detected after {detected:.2f}s (bound {bound:.1f}s)")
            assert detected < bound
            assert host.state == "unreachable" and not host.connected
            # During the backoff a call fails at once, without a connection attempt.
            if host.retry_in() > 0.05:
                with pytest.raises(HostUnreachable, match="next connection attempt"):
                    await host.observe(req)
        finally:
            lab.heal(h.index)
        t1 = time.monotonic()
        snap = None
        for _ in range(100):
            try:
                snap = await host.observe(req)
                break
            except HostUnreachable:
                await asyncio.sleep(max(0.1, host.retry_in()))
            if time.monotonic() - t1 > 30:
                break
        assert snap is not None, host.last_error
        print(f"reconnected {time.monotonic() - t1:.2f}s after heal ({host.connects} connects)")
        state: str = host.state  # (mypy narrowed it to "unreachable" above)
        assert state == "connected" and host.connects == 2
    assert other_tasks(baseline) == set()


async def test_unix_connection(lab: NetnsLab, tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        writer.write(b"echo: " + line)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path)
    try:
        async with ssh_host(lab.hosts[0]) as host:
            reader, writer = await host.unix_connection(path)
            writer.write(b'{"v":1,"id":1,"cmd":"ping"}\n')
            reply = await asyncio.wait_for(reader.readline(), 10)
            assert reply == b'echo: {"v":1,"id":1,"cmd":"ping"}\n'
            writer.close()
            with pytest.raises(CommandFailed):
                await host.unix_connection(str(tmp_path / "nope.sock"))
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("ssh_hosts", [1], indirect=True)
async def test_ssh_hosts_fixture(ssh_hosts: list[NetnsHost]) -> None:  # noqa: F811
    (h,) = ssh_hosts
    spec = HostSpec.model_validate(h.host_spec_dict())
    assert spec.address == h.address and h.tmux_tmpdir.is_dir()
    async with ssh_host(h) as host:
        res = await host.run(["sh", "-c", 'printf %s "$TMUX_TMPDIR"'])
        assert res.stdout == str(h.tmux_tmpdir)


async def test_channel_bound_and_command_timeout(lab: NetnsLab, tmp_path: Path) -> None:
    log = tmp_path / "depth"
    log.write_text("")
    script = 'echo s >> "$1"; sleep 0.3; echo e >> "$1"'
    async with ssh_host(lab.hosts[1], max_channels=2) as host:
        results = await asyncio.gather(
            *(host.run(["sh", "-c", script, "x", str(log)]) for _ in range(6))
        )
        assert all(r.ok for r in results)
        depth = peak = 0
        for mark in log.read_text().split():
            depth += 1 if mark == "s" else -1
            peak = max(peak, depth)
        assert peak == 2, log.read_text()

        with pytest.raises(CommandTimeout):
            await host.run(["sleep", "5"], timeout=0.5)
        # A timed-out command does not cost the connection.
        assert (await host.run(["true"])).ok
        assert host.connects == 1
