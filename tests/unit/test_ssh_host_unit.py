"""SshHost without sshd: backoff arithmetic, refusal during backoff, key-file errors."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from fleetd.config import HostSpec
from fleetd.errors import HostKeyRejected, HostUnreachable
from fleetd.hosts.base import Host, ObserveRequest
from fleetd.hosts.ssh import SshHost, reconnect_delay


def test_reconnect_delay_grows_caps_and_jitters() -> None:
    assert reconnect_delay(1, 1.0, 60.0, 0.0) == 1.0
    assert reconnect_delay(2, 1.0, 60.0, 0.0) == 2.0
    assert reconnect_delay(4, 1.0, 60.0, 0.0) == 8.0
    assert reconnect_delay(30, 1.0, 60.0, 0.0) == 60.0
    assert reconnect_delay(4, 1.0, 60.0, 0.999) == pytest.approx(8.0 * 0.75, rel=1e-2)
    for failures in range(1, 40):
        for rand in (0.0, 0.5, 0.999):
            assert 1.0 <= reconnect_delay(failures, 1.0, 60.0, rand) <= 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec(tmp_path: Path, **kw: Any) -> HostSpec:
    kh = tmp_path / "known_hosts"
    if not kh.exists():
        kh.write_text("")
    body: dict[str, Any] = {
        "name": "vps1",
        "address": "127.0.0.1",
        "port": free_port(),  # nothing listens: connection refused
        "known_hosts": str(kh),
        "connect_timeout": 2.0,
        "reconnect_initial": 30.0,
        "reconnect_cap": 60.0,
    }
    body.update(kw)
    return HostSpec.model_validate(body)


async def test_refused_then_backoff_without_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = 0
    real_connect = asyncssh.connect

    async def counting_connect(*args: Any, **kwargs: Any) -> Any:
        nonlocal attempts
        attempts += 1
        return await real_connect(*args, **kwargs)

    monkeypatch.setattr(asyncssh, "connect", counting_connect)
    host = SshHost(spec(tmp_path), rand=lambda: 0.0)
    assert isinstance(host, Host)
    with pytest.raises(HostUnreachable, match="cannot connect"):
        await host.ensure_connected()
    assert attempts == 1 and host.state == "unreachable"
    assert 29.0 < host.retry_in() <= 30.0
    with pytest.raises(HostUnreachable, match="next connection attempt in"):
        await host.observe(ObserveRequest(sockets=("s",), files=("f",)))
    with pytest.raises(HostUnreachable):
        await host.run(["true"])
    assert attempts == 1 and host.round_trips == 0
    await host.close()


async def test_unreadable_known_hosts_is_key_rejected(tmp_path: Path) -> None:
    host = SshHost(spec(tmp_path, known_hosts=str(tmp_path / "absent")))
    with pytest.raises(HostKeyRejected, match="cannot read known_hosts"):
        await host.ensure_connected()
    assert host.state == "key_rejected"
    with pytest.raises(HostKeyRejected):
        await host.read_files(["/etc/hostname"])
    await host.close()


async def test_closed_host_refuses(tmp_path: Path) -> None:
    host = SshHost(spec(tmp_path))
    await host.close()
    with pytest.raises(HostUnreachable, match="closed"):
        await host.run(["true"])


def test_expand_path_before_and_after_connect(tmp_path: Path) -> None:
    host = SshHost(spec(tmp_path))
    assert host.expand_path("~/hb") == "~/hb"
    host._home = "/home/agent/"
    assert host.expand_path("~/hb") == "/home/agent/hb"
    assert host.expand_path("~") == "/home/agent/"
    assert host.expand_path("~bob/x") == "~bob/x"
    assert host.expand_path("/abs") == "/abs"


def test_local_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="not an ssh host"):
        SshHost(HostSpec(name="local", kind="local"))
