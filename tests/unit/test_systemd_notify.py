"""Notifier: environment parsing, message format, watchdog pacing with plain numbers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.systemd import Notifier

PID = 4242


class Receiver:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def drain(self) -> list[str]:
        out = []
        for _ in range(10_000):
            try:
                out.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                break
        return out


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(tmp_path / "notify.sock")
    try:
        yield r
    finally:
        r.sock.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = Notifier.from_env({"WATCHDOG_USEC": "30000000"}, PID)
    assert n.enabled is False
    assert n.watchdog_interval is None
    assert n.max_sleep() is None
    n.ready("up")
    n.status("x")
    n.reloading(1)
    n.stopping()
    assert n.progress(0.0) is False
    assert n.progress(100.0) is False


def test_watchdog_interval_from_env(receiver: Receiver) -> None:
    env = {"NOTIFY_SOCKET": str(receiver.path), "WATCHDOG_USEC": "30000000"}
    n = Notifier.from_env(env, PID)
    assert n.enabled
    assert n.watchdog_interval == 30.0
    assert n.max_sleep() == 15.0
    assert Notifier.from_env({**env, "WATCHDOG_PID": str(PID)}, PID).watchdog_interval == 30.0


def test_watchdog_for_another_pid_does_not_apply(receiver: Receiver) -> None:
    env = {"NOTIFY_SOCKET": str(receiver.path), "WATCHDOG_USEC": "30000000"}
    n = Notifier.from_env({**env, "WATCHDOG_PID": str(PID + 1)}, PID)
    assert n.enabled
    assert n.watchdog_interval is None
    assert n.max_sleep() is None
    assert [n.progress(t) for t in (0.0, 20.0, 40.0)] == [False, False, False]
    assert receiver.drain() == []


@pytest.mark.parametrize("usec", ["", "0", "soon", "-5"])
def test_bad_or_zero_watchdog_usec_means_no_watchdog(receiver: Receiver, usec: str) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(receiver.path), "WATCHDOG_USEC": usec}, PID)
    assert n.enabled
    assert n.watchdog_interval is None


def test_unsupported_socket_address_disables() -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}, PID).enabled is False


def test_progress_pings_at_half_the_interval(receiver: Receiver) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(receiver.path), "WATCHDOG_USEC": "10000000"}, PID)
    # A loop iterating every second for 20 s: pings at 0, 5, 10, 15, 20.
    pinged = [t for t in range(21) if n.progress(float(t))]
    assert pinged == [0, 5, 10, 15, 20]
    assert receiver.drain() == ["WATCHDOG=1\n"] * 5


def test_a_stalled_loop_stops_the_pings(receiver: Receiver) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(receiver.path), "WATCHDOG_USEC": "10000000"}, PID)
    assert n.progress(0.0)
    # The loop is wedged from t=0 to t=60: nothing calls progress(), nothing is sent.
    assert receiver.drain() == ["WATCHDOG=1\n"]
    assert receiver.drain() == []
    # It recovers: the first iteration pings at once.
    assert n.progress(60.0)
    assert receiver.drain() == ["WATCHDOG=1\n"]


def test_message_format(receiver: Receiver) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(receiver.path)}, PID)
    n.ready()
    n.ready("supervising 3 agents")
    n.status("2 agents up\n1 in backoff")
    n.reloading(123456789)
    n.stopping()
    n.extend_timeout(1.5)
    assert receiver.drain() == [
        "READY=1\n",
        "READY=1\nSTATUS=supervising 3 agents\n",
        "STATUS=2 agents up 1 in backoff\n",
        "RELOADING=1\nMONOTONIC_USEC=123456789\n",
        "STOPPING=1\n",
        "EXTEND_TIMEOUT_USEC=1500000\n",
    ]


def test_vanished_socket_is_swallowed_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "gone.sock"
    n = Notifier.from_env({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}, PID)
    n.ready()  # nobody there: no exception
    assert n.progress(0.0) is False
    r = Receiver(path)
    try:
        # Not counted as a ping while failing, so the next iteration pings at once.
        assert n.progress(0.1) is True
        assert r.drain() == ["WATCHDOG=1\n"]
    finally:
        r.sock.close()
