"""Write structured entries to systemd-journald over its native protocol.

Why hand-written: ``systemd-python`` has no wheels (it compiles against
``libsystemd-dev``); ``cysystemd`` ships a manylinux_2_34 wheel bundling its own
libsystemd, but ``sd_journal_send()`` always writes to the fixed path
``/run/systemd/journal/socket`` (no journald namespace, no private test journald)
and sends on a *blocking* socket, so a backed-up journald would stall fleetd's
event loop. The native protocol is short and documented
(https://systemd.io/JOURNAL_NATIVE_PROTOCOL/):

* one ``AF_UNIX``/``SOCK_DGRAM`` datagram per entry, to ``/run/systemd/journal/socket``;
* each field is ``NAME=value\\n``; a value containing a newline is
  sent as ``NAME\\n`` + little-endian 64-bit length + value + ``\\n``;
* field names are ``[A-Z0-9_]``, at most 64 characters, starting with a letter:
  ``_``-prefixed names are trusted fields that only journald itself adds;
* an entry too large for one datagram (``EMSGSIZE``/``ENOBUFS``) is written to a
  memfd, sealed against any change, and the fd alone is sent with ``SCM_RIGHTS``.

Sending never blocks (``MSG_DONTWAIT`` on a non-blocking socket) and never raises:
:meth:`JournalWriter.send` returns False when journald is missing, refuses, or its
queue is full (``EAGAIN``), and the caller falls back (see ``alerts.AlertSink``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import struct
from collections.abc import Mapping

import structlog

log = structlog.get_logger("fleetd.journal")

DEFAULT_SOCKET = "/run/systemd/journal/socket"
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
# libsystemd asks for this much send buffer; the kernel caps it at net.core.wmem_max.
_SNDBUF = 8 * 1024 * 1024
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def valid_field_name(name: str) -> bool:
    return _FIELD_NAME.fullmatch(name) is not None


def encode_entry(fields: Mapping[str, str | int | bytes]) -> bytes:
    """Serialize ``fields`` in the native format. Raises ValueError on a bad name."""
    parts: list[bytes] = []
    for name, value in fields.items():
        if not valid_field_name(name):
            raise ValueError(f"invalid journal field name {name!r}")
        if isinstance(value, bytes):
            data = value
        else:  # str, int, and anything else a caller slips in despite the types
            data = str(value).encode("utf-8", errors="surrogateescape")
        key = name.encode()
        if b"\n" in data:
            parts.append(key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key + b"=" + data + b"\n")
    return b"".join(parts)


class JournalWriter:
    """A non-blocking sender of journal entries to one journald socket."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET) -> None:
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        self._failing: int | None = None  # errno of the current run of failures
        # Counters, for metrics and tests: how entries went out, how many were lost.
        self.sent_datagram = 0
        self.sent_memfd = 0
        self.failed = 0

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, fields: Mapping[str, str | int | bytes]) -> bool:
        """Send one entry. True if journald took it; False (never raises) otherwise.

        Invalid field names are dropped (and logged) rather than losing the entry.
        """
        good: dict[str, str | int | bytes] = {}
        for name, value in fields.items():
            if valid_field_name(name):
                good[name] = value
            else:
                log.warning("journal.field.invalid", field=name)
        try:
            payload = encode_entry(good)
            sock = self._socket()
        except (OSError, ValueError) as exc:
            return self._fail(exc)
        try:
            sock.sendto(payload, socket.MSG_DONTWAIT, self.socket_path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                return self._fail(exc)
        else:
            self.sent_datagram += 1
            return self._ok()
        try:
            self._send_memfd(sock, payload)
        except OSError as exc:
            return self._fail(exc)
        self.sent_memfd += 1
        return self._ok()

    def _send_memfd(self, sock: socket.socket, payload: bytes) -> None:
        # journald only accepts a memfd that is sealed, so it cannot change under it.
        fd = os.memfd_create("fleetd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
            sock.sendmsg([], rights, socket.MSG_DONTWAIT, self.socket_path)
        finally:
            os.close(fd)  # journald holds its own reference once sendmsg returned

    def _ok(self) -> bool:
        if self._failing is not None:
            self._failing = None
            log.info("journal.send.recovered", socket=self.socket_path)
        return True

    def _fail(self, exc: Exception) -> bool:
        self.failed += 1
        code = exc.errno if isinstance(exc, OSError) else -1
        # Log once per run of failures of one kind: a missing journal must not flood.
        if self._failing != code:
            self._failing = code
            log.warning("journal.send.failed", socket=self.socket_path, error=str(exc))
        return False

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
