"""Tell systemd how fleetd is doing: ``sd_notify`` readiness, status and watchdog.

Why not libsystemd (``systemd-python`` / ``cysystemd``): the notify protocol is one
datagram of ``KEY=value`` lines to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET``; ``systemd-python`` only ships as an sdist that compiles against
``libsystemd-dev``, and a C library would give us a *blocking* send on a socket
whose peer (PID 1) may be busy. A dozen lines of :mod:`socket` do the same with a
non-blocking socket, and keep fleetd installable with pip alone.

The watchdog is deliberately NOT pinged by a background task. A timer task would
keep pinging while the supervision loop is wedged (a stuck await, a deadlock, a
blocking call), which is exactly the failure ``WatchdogSec=`` exists to catch. So
the supervision loop calls :meth:`Notifier.progress` on every iteration and
:meth:`Notifier.max_sleep` bounds how long it may sleep between iterations: if the
loop stops iterating, the pings stop and systemd restarts fleetd.

Nothing here may block or raise into the caller: a notification that cannot be
sent is logged once (until a send succeeds again) and dropped. Without
``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=simple``) every method is a
no-op.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("fleetd.systemd")


def _address(value: str) -> str | bytes | None:
    """The socket address in ``$NOTIFY_SOCKET``: a path, or ``@name`` (abstract)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Abstract namespace: a leading NUL instead of '@', no trailing NUL.
        return b"\0" + value[1:].encode()
    return None  # vsock:... and anything else is not supported here


class Notifier:
    """sd_notify sender. Build it with :meth:`from_env` (or :meth:`disabled`)."""

    def __init__(self, address: str | bytes | None, watchdog_interval: float | None) -> None:
        self._address = address
        self._sock: socket.socket | None = None
        self.enabled: bool = address is not None
        # The watchdog only means something if there is a socket to ping.
        self.watchdog_interval: float | None = watchdog_interval if self.enabled else None
        self._last_ping: float | None = None
        self._failing = False
        if self.enabled:
            try:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            except OSError as exc:
                log.warning("systemd.notify.socket_failed", error=str(exc))
                self.enabled = False
                self.watchdog_interval = None

    @classmethod
    def disabled(cls) -> Notifier:
        return cls(None, None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], pid: int) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``environ``.

        The watchdog applies to ``pid`` when ``WATCHDOG_PID`` is absent or equal to it
        (systemd sets it so that a forked child does not ping on the parent's behalf).
        """
        raw = environ.get("NOTIFY_SOCKET", "")
        address = _address(raw) if raw else None
        if raw and address is None:
            log.warning("systemd.notify.unsupported_socket", notify_socket=raw)
        interval: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        wd_pid = environ.get("WATCHDOG_PID", "")
        try:
            applies = not wd_pid or int(wd_pid) == pid
            if usec and applies and int(usec) > 0:
                interval = int(usec) / 1e6
        except ValueError:
            log.warning("systemd.watchdog.bad_env", watchdog_usec=usec, watchdog_pid=wd_pid)
        return cls(address, interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.enabled = False
        self.watchdog_interval = None

    # -- messages ---------------------------------------------------------------------

    def ready(self, status: str | None = None) -> None:
        """READY=1: send only once fleetd listens and supervises (trio's started())."""
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        self.send(lines)

    def status(self, text: str) -> None:
        self.send([f"STATUS={_one_line(text)}"])

    def reloading(self, monotonic_usec: int) -> None:
        """RELOADING=1 with the CLOCK_MONOTONIC time of the reload; READY=1 ends it."""
        self.send(["RELOADING=1", f"MONOTONIC_USEC={int(monotonic_usec)}"])

    def stopping(self) -> None:
        self.send(["STOPPING=1"])

    def extend_timeout(self, seconds: float) -> None:
        """EXTEND_TIMEOUT_USEC: ask for more time during a slow start or stop."""
        self.send([f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}"])

    # -- watchdog -------------------------------------------------------------------

    def progress(self, now: float) -> bool:
        """Record one iteration of the supervision loop at monotonic time ``now``.

        Sends WATCHDOG=1 iff the watchdog applies and at least half the interval has
        passed since the last ping (or there was none yet). Returns True if it pinged.
        """
        interval = self.watchdog_interval
        if interval is None:
            return False
        if self._last_ping is not None and now - self._last_ping < interval / 2:
            return False
        if not self.send(["WATCHDOG=1"]):
            return False  # retried on the next iteration
        self._last_ping = now
        return True

    def max_sleep(self) -> float | None:
        """The longest the loop may sleep between iterations, or None without watchdog."""
        if self.watchdog_interval is None:
            return None
        return self.watchdog_interval / 2

    # -- transport --------------------------------------------------------------------

    def send(self, lines: list[str]) -> bool:
        """Send one datagram; True if the kernel took it. Never blocks, never raises."""
        if self._sock is None or self._address is None:
            return False
        payload = ("\n".join(lines) + "\n").encode()
        try:
            self._sock.sendto(payload, socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            # Logged once per run of failures so a vanished PID 1 socket cannot flood.
            if not self._failing:
                self._failing = True
                log.warning(
                    "systemd.notify.failed",
                    error=str(exc),
                    errno=exc.errno,
                    what=lines[0].partition("=")[0],
                )
            return False
        if self._failing:
            self._failing = False
            log.info("systemd.notify.recovered")
        return True

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._sock is not None:
                self._sock.close()


def _one_line(text: str) -> str:
    # The protocol is newline-separated: a newline in STATUS would start a new key.
    return " ".join(text.splitlines()).strip()
