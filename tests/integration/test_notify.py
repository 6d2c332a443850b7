"""Notifier against real NOTIFY_SOCKET receivers (path and abstract), in real time.

The watchdog test runs a loop on the wall clock with a short WATCHDOG_USEC and
counts pings; bounds are derived from the protocol (never more than one ping per
half interval) and kept loose on the low side, so a loaded machine cannot fail it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetd.systemd import Notifier


@dataclass
class Receiver:
    sock: socket.socket
    notify_socket: str  # the NOTIFY_SOCKET value that reaches it

    def recv_all(self, wait: float = 0.0) -> list[str]:
        """Everything queued, after waiting up to ``wait`` seconds for a first datagram."""
        out: list[str] = []
        self.sock.settimeout(wait if wait > 0 else None)
        if wait > 0:
            try:
                out.append(self.sock.recv(65536).decode())
            except TimeoutError:
                return out
        self.sock.setblocking(False)
        for _ in range(10_000):
            try:
                out.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                break
        return out


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if request.param == "path":
            path = tmp_path / "notify"
            sock.bind(str(path))
            value = str(path)
        else:
            name = f"fleetd-test-notify-{uuid.uuid4().hex}"
            sock.bind(b"\0" + name.encode())
            value = "@" + name
        yield Receiver(sock, value)
    finally:
        sock.close()


def test_lifecycle_datagrams_arrive(receiver: Receiver) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": receiver.notify_socket}, os.getpid())
    assert n.enabled
    n.ready("supervising 2 agents")
    n.status("reloading roster")
    now_usec = time.monotonic_ns() // 1000
    n.reloading(now_usec)
    n.ready()
    n.stopping()
    got = receiver.recv_all(wait=5.0)
    assert got == [
        "READY=1\nSTATUS=supervising 2 agents\n",
        "STATUS=reloading roster\n",
        f"RELOADING=1\nMONOTONIC_USEC={now_usec}\n",
        "READY=1\n",
        "STOPPING=1\n",
    ]


def test_watchdog_pings_while_looping_and_stops_when_blocked(receiver: Receiver) -> None:
    interval = 0.4
    env = {
        "NOTIFY_SOCKET": receiver.notify_socket,
        "WATCHDOG_USEC": str(int(interval * 1e6)),
        "WATCHDOG_PID": str(os.getpid()),
    }
    n = Notifier.from_env(env, os.getpid())
    assert n.max_sleep() == pytest.approx(interval / 2)

    # A healthy supervision loop: iterates every 10 ms for 1.2 s.
    start = time.monotonic()
    pings = 0
    for _ in range(1000):
        now = time.monotonic()
        if now - start >= 1.2:
            break
        pings += n.progress(now)
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    got = receiver.recv_all(wait=5.0)
    assert got == ["WATCHDOG=1\n"] * pings
    # At most one ping per half interval (+1 for the ping at the start) ...
    assert pings <= int(elapsed / (interval / 2)) + 1
    # ... and it kept pinging through the loop, not just once.
    assert pings >= 3

    # A wedged loop: it does not call progress() for 3 half-intervals; no pings.
    time.sleep(3 * interval / 2)
    assert receiver.recv_all() == []

    # Unwedged: the next iteration pings immediately (it is overdue).
    assert n.progress(time.monotonic())
    assert receiver.recv_all(wait=5.0) == ["WATCHDOG=1\n"]


def test_no_pings_for_another_watchdog_pid(receiver: Receiver) -> None:
    env = {
        "NOTIFY_SOCKET": receiver.notify_socket,
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": str(os.getpid() + 1),
    }
    n = Notifier.from_env(env, os.getpid())
    for _ in range(30):
        assert n.progress(time.monotonic()) is False
        time.sleep(0.01)
    n.status("still sent: only the watchdog belongs to WATCHDOG_PID")
    assert receiver.recv_all(wait=5.0) == [
        "STATUS=still sent: only the watchdog belongs to WATCHDOG_PID\n"
    ]


def test_no_notify_socket_is_a_no_op(receiver: Receiver) -> None:
    n = Notifier.from_env({"WATCHDOG_USEC": "200000"}, os.getpid())
    n.ready("x")
    n.stopping()
    assert n.progress(time.monotonic()) is False
    assert receiver.recv_all(wait=0.3) == []
