"""The client side of the control socket, for ``fleetctl`` and scripts.

Blocking sockets on purpose: fleetctl is a short-lived process, and avoiding an
event loop keeps its start-up fast (it is measured against supervisorctl).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleetd.control.protocol import make_request
from fleetd.errors import DaemonUnavailable, FleetError, ProtocolError, error_class_for

MAX_REPLY = 64 * 1024 * 1024


class Client:
    def __init__(self, path: Path | str, timeout: float = 60.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._next_id = 0
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except FileNotFoundError:
                sock.close()
                raise DaemonUnavailable(
                    f"fleetd is not running: no control socket at {self.path}"
                ) from None
            except PermissionError:
                sock.close()
                raise DaemonUnavailable(
                    f"permission denied on {self.path}: join fleetd's group or use sudo"
                ) from None
            except OSError as exc:
                sock.close()
                raise DaemonUnavailable(
                    f"cannot reach fleetd at {self.path}: {exc.strerror or exc}"
                ) from None
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _readline(self) -> dict[str, Any]:
        sock = self._connect()
        while b"\n" not in self._buf:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise DaemonUnavailable(f"fleetd did not answer within {self.timeout:g}s") from None
            if not chunk:
                raise DaemonUnavailable("fleetd closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_REPLY:
                raise ProtocolError("reply too large")
        line, _, self._buf = self._buf.partition(b"\n")
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ProtocolError("malformed reply")
        return obj

    def _send(self, cmd: str, args: dict[str, Any] | None) -> int:
        self._next_id += 1
        try:
            self._connect().sendall(make_request(self._next_id, cmd, args))
        except OSError as exc:
            raise DaemonUnavailable(f"cannot talk to fleetd: {exc}") from None
        return self._next_id

    @staticmethod
    def _result(reply: dict[str, Any]) -> Any:
        if reply.get("ok"):
            return reply.get("result")
        err = reply.get("error") or {}
        cls = error_class_for(str(err.get("code", "internal")))
        exc: FleetError = cls(str(err.get("message", "unknown error")))
        exc.details = err.get("details") or {}
        raise exc

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        self._send(cmd, args)
        return self._result(self._readline())

    def follow(self, args: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self._send("events", {**args, "follow": True})
        self._result(self._readline())
        sock = self._connect()
        sock.settimeout(None)
        while True:
            obj = self._readline()
            event = obj.get("event")
            if isinstance(event, dict):
                yield event
