"""Throwaway SSH hosts made of network namespaces, for integration tests.

Each host is a network namespace ``fleetd-t<run>-<i>`` joined to the root namespace
by a veth pair (``10.X.Y.4i+1/30`` on the root side, ``10.X.Y.4i+2/30`` inside, with
``X.Y`` random per lab so concurrent runs do not collide), running a real OpenSSH
``sshd`` with generated host keys, a generated client key in ``authorized_keys``
and a ``known_hosts`` file covering every host. A ``blackhole`` route for the lab's
``/24`` sits under the per-host routes, so while a link is down packets for a host
are dropped locally instead of leaking to the default gateway.

Namespaces share the filesystem with the test, so the remote hosts run the same
tmux and see the same files (heartbeat files written by the test are visible
"remotely"). So that each host's tmux servers are its own, ``sshd_config`` sets
``SetEnv TMUX_TMPDIR=<host dir>/tmux``: every SSH session on host i gets that
variable from sshd itself, and fleetd needs no test-only knowledge. (The client
side cannot override it: server-side SetEnv wins over anything sent with AcceptEnv.)

Partitions: :meth:`NetnsLab.partition` with ``how="link"`` takes the root-side veth
down (silent loss, like a cut cable); ``how="iptables"`` inserts DROP rules for
INPUT and OUTPUT inside the namespace (silent loss with the link up, like a
firewall blackhole). :meth:`NetnsLab.heal` undoes either.

Teardown, run even when the test fails, kills by pid every process left in each
namespace (sshd, session shells, agents), the tmux servers under each host's
TMUX_TMPDIR, then deletes the namespaces (which removes the veths), the blackhole
route and the temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.conftest import require, require_binary, require_root

SSHD = "/usr/sbin/sshd"
PartitionHow = Literal["link", "iptables"]


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def _keygen(path: Path, comment: str) -> str:
    """Generate an ed25519 key pair; return the public key line ('type base64 comment')."""
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class NetnsHost:
    """One SSH test host. ``name`` is its roster name (``h0``, ``h1``...)."""

    index: int
    name: str
    netns: str
    address: str  # inside the namespace: where sshd listens
    root_address: str  # root side of the veth
    veth_root: str
    veth_ns: str
    dir: Path
    known_hosts: Path
    client_key: Path
    tmux_tmpdir: Path
    host_key: Path
    sshd_config: Path
    sshd_log: Path
    sshd_pid: int | None = None
    partitioned: set[str] = field(default_factory=set)

    def host_spec_dict(self, **overrides: Any) -> dict[str, Any]:
        """A dict valid for ``fleetd.config.HostSpec``, with test-friendly timeouts."""
        spec: dict[str, Any] = {
            "name": self.name,
            "kind": "ssh",
            "address": self.address,
            "port": 22,
            "user": "root",
            "known_hosts": str(self.known_hosts),
            "client_keys": [str(self.client_key)],
            "connect_timeout": 3.0,
            "keepalive_interval": 1.0,
            "keepalive_count": 2,
            "max_channels": 4,
            "reconnect_initial": 0.5,
            "reconnect_cap": 2.0,
        }
        spec.update(overrides)
        return spec

    def ns(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host's namespace (from the test, not over SSH)."""
        return _sh("ip", "netns", "exec", self.netns, *argv, check=check)

    def sshd_sessions(self) -> int:
        """Sessions sshd has started (one per exec), from its VERBOSE log."""
        try:
            return self.sshd_log.read_text(errors="replace").count("Starting session:")
        except FileNotFoundError:
            return 0


class NetnsLab:
    """Creates, partitions, heals and tears down a set of :class:`NetnsHost`."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self.run_id = f"{os.getpid() % 0xFFFF:04x}{random.randrange(0x100):02x}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"fleetd-netns-{self.run_id}-", dir=base_dir))
        self.prefix = self._pick_prefix()
        self.hosts: list[NetnsHost] = []
        self._blackhole = False
        self._client_key = self.dir / "client_key"
        self._client_pub = _keygen(self._client_key, f"fleetd-test-{self.run_id}")
        self._authorized = self.dir / "authorized_keys"
        self._authorized.write_text(self._client_pub + "\n")
        self.known_hosts = self.dir / "known_hosts"

    @staticmethod
    def _pick_prefix() -> str:
        """A 10.X.Y.0/24 that no address or route of this machine uses yet."""
        used = _sh("ip", "-4", "-o", "addr", "show").stdout + _sh("ip", "-4", "route").stdout
        rng = random.Random(os.getpid() ^ time.time_ns())
        for _ in range(50):
            prefix = f"10.{rng.randrange(64, 251)}.{rng.randrange(0, 256)}"
            if f" {prefix}." not in used and f"\n{prefix}." not in used:
                return prefix
        raise RuntimeError("no free 10.X.Y.0/24 for test hosts")

    def create(self, count: int) -> list[NetnsHost]:
        if count < 1 or count > 60:
            raise ValueError("between 1 and 60 hosts")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        if not self._blackhole:
            _sh("ip", "route", "add", "blackhole", f"{self.prefix}.0/24")
            self._blackhole = True
        new = [self._create_host(len(self.hosts)) for _ in range(count)]
        self.write_known_hosts()
        for host in new:
            self._start_sshd(host)
        for host in new:
            self.wait_listening(host)
        return new

    def _create_host(self, i: int) -> NetnsHost:
        d = self.dir / f"h{i}"
        d.mkdir()
        host = NetnsHost(
            index=i,
            name=f"h{i}",
            netns=f"fleetd-t{self.run_id}-{i}",
            address=f"{self.prefix}.{4 * i + 2}",
            root_address=f"{self.prefix}.{4 * i + 1}",
            veth_root=f"fv{self.run_id}{i}r",
            veth_ns=f"fv{self.run_id}{i}n",
            dir=d,
            known_hosts=self.known_hosts,
            client_key=self._client_key,
            tmux_tmpdir=d / "tmux",
            host_key=d / "ssh_host_ed25519_key",
            sshd_config=d / "sshd_config",
            sshd_log=d / "sshd.log",
        )
        # Registered before the first system change, so teardown sees partial setups.
        self.hosts.append(host)
        host.tmux_tmpdir.mkdir(mode=0o700)
        _keygen(host.host_key, host.name)
        _sh("ip", "netns", "add", host.netns)
        _sh("ip", "link", "add", host.veth_root, "type", "veth", "peer", "name", host.veth_ns)
        _sh("ip", "link", "set", host.veth_ns, "netns", host.netns)
        _sh("ip", "addr", "add", f"{host.root_address}/30", "dev", host.veth_root)
        _sh("ip", "link", "set", host.veth_root, "up")
        host.ns("ip", "link", "set", "lo", "up")
        host.ns("ip", "addr", "add", f"{host.address}/30", "dev", host.veth_ns)
        host.ns("ip", "link", "set", host.veth_ns, "up")
        host.sshd_config.write_text(
            "\n".join(
                [
                    "Port 22",
                    f"ListenAddress {host.address}",
                    f"HostKey {host.host_key}",
                    f"PidFile {d / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self._authorized}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "MaxSessions 10",
                    "AllowStreamLocalForwarding yes",
                    "PrintMotd no",
                    "LogLevel VERBOSE",
                    f"SetEnv TMUX_TMPDIR={host.tmux_tmpdir}",
                    "",
                ]
            )
        )
        return host

    def write_known_hosts(self, override: dict[str, str] | None = None) -> None:
        """Rewrite known_hosts; ``override`` maps a host name to a public key line."""
        lines = []
        for host in self.hosts:
            pub = (override or {}).get(host.name) or host.host_key.with_suffix(".pub").read_text()
            keytype, key = pub.split()[:2]
            lines.append(f"{host.address} {keytype} {key}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def _start_sshd(self, host: NetnsHost) -> None:
        with host.sshd_log.open("ab") as log:
            # `ip netns exec` execs sshd, so this pid is sshd's own (-D: no fork).
            proc = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, SSHD, "-D", "-e", "-f", str(host.sshd_config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        host.sshd_pid = proc.pid

    def wait_listening(self, host: NetnsHost, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host.address, 22), 0.5):
                return
            if time.monotonic() > deadline:
                log = host.sshd_log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"sshd on {host.name} not listening after {timeout}s:\n{log}")
            time.sleep(0.05)

    def partition(self, i: int, how: PartitionHow = "link") -> None:
        host = self.hosts[i]
        if how == "link":
            _sh("ip", "link", "set", host.veth_root, "down")
        else:
            host.ns("iptables", "-w", "-I", "INPUT", "-j", "DROP")
            host.ns("iptables", "-w", "-I", "OUTPUT", "-j", "DROP")
        host.partitioned.add(how)

    def heal(self, i: int) -> None:
        host = self.hosts[i]
        if "link" in host.partitioned:
            _sh("ip", "link", "set", host.veth_root, "up")
        if "iptables" in host.partitioned:
            host.ns("iptables", "-w", "-D", "INPUT", "-j", "DROP", check=False)
            host.ns("iptables", "-w", "-D", "OUTPUT", "-j", "DROP", check=False)
        host.partitioned.clear()

    def tmux_server_pids(self, host: NetnsHost) -> list[int]:
        pids = []
        for sock in host.tmux_tmpdir.glob("tmux-*/*"):
            res = _sh("tmux", "-S", str(sock), "display-message", "-p", "#{pid}", check=False)
            if res.returncode == 0 and res.stdout.strip().isdigit():
                pids.append(int(res.stdout.strip()))
        return pids

    def teardown(self) -> None:
        for host in self.hosts:
            pids = set(self.tmux_server_pids(host))
            res = _sh("ip", "netns", "pids", host.netns, check=False)
            pids |= {int(p) for p in res.stdout.split() if p.isdigit()}
            if host.sshd_pid is not None:
                pids.add(host.sshd_pid)
            _kill_all(pids)
            if host.sshd_pid is not None:
                # Reap our own child so no zombie is left behind.
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(host.sshd_pid, 0)
            _sh("ip", "link", "del", host.veth_root, check=False)
            _sh("ip", "netns", "del", host.netns, check=False)
        if self._blackhole:
            _sh("ip", "route", "del", "blackhole", f"{self.prefix}.0/24", check=False)
            self._blackhole = False
        self.hosts.clear()
        subprocess.run(["rm", "-rf", "--", str(self.dir)], check=False, timeout=30)


def _kill_all(pids: set[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if _exists(p)}
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def require_netns() -> None:
    require_root()
    for tool in ("ip", "ssh-keygen", "tmux", "iptables"):
        require_binary(tool)
    require(os.path.exists(SSHD), f"needs OpenSSH server at {SSHD}")


@contextlib.contextmanager
def running_lab(hosts: int) -> Iterator[NetnsLab]:
    """``hosts`` namespace hosts with sshd, torn down by pid whatever happens."""
    require_netns()
    lab = NetnsLab()
    try:
        lab.create(hosts)
        yield lab
    finally:
        lab.teardown()


@pytest.fixture
def netns_lab() -> Iterator[NetnsLab]:
    require_netns()
    lab = NetnsLab()
    try:
        yield lab
    finally:
        lab.teardown()


@pytest.fixture
def make_ssh_hosts(netns_lab: NetnsLab) -> Callable[[int], list[NetnsHost]]:
    """Factory: ``make_ssh_hosts(3)`` -> three running hosts (torn down after the test)."""
    return netns_lab.create


@pytest.fixture
def ssh_hosts(request: pytest.FixtureRequest, netns_lab: NetnsLab) -> list[NetnsHost]:
    """``count`` hosts, 3 unless parametrized indirectly: ``@pytest.mark.parametrize(
    "ssh_hosts", [2], indirect=True)``."""
    count = getattr(request, "param", 3)
    return netns_lab.create(int(count))
