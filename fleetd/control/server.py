"""The daemon side of the control socket.

Each connection may carry several requests, one per line, answered in order.
Every request is bounded: at most ``request_max_bytes`` (a longer line gets
``request.too_large`` and the connection is closed, since the rest of the line
cannot be trusted) and ``request_timeout`` seconds to arrive. The caller's uid
comes from SO_PEERCRED, never from the request; mutating commands are refused
unless that uid is root, fleetd's own uid, or listed in ``settings.operators``.
A bad request never disturbs other clients: it is answered with an error code
and the daemon keeps serving.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from fleetd.control import protocol
from fleetd.errors import FleetError, PermissionDenied, RequestTimeout, RequestTooLarge

log = structlog.get_logger("fleetd.control")

Handler = Callable[[protocol.Request, int], Awaitable[Any]]
Streamer = Callable[[protocol.Request, int], AsyncIterator[dict[str, Any]]]


def peer_uid(stream: SocketStream) -> int:
    raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
    creds = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    def __init__(
        self,
        path: Path,
        handler: Handler,
        streamer: Streamer,
        *,
        max_bytes: int,
        timeout: float,
        mode: int,
        operators: tuple[int, ...],
    ) -> None:
        self.path = path
        self.handler = handler
        self.streamer = streamer
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.mode = mode
        self.allowed = {0, os.geteuid(), *operators}

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Single instance is guaranteed by the daemon's lock, so a socket file left
        # here is from a dead fleetd and safe to replace.
        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            listener = await anyio.create_unix_listener(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        async with listener:
            task_status.started()
            await listener.serve(self._connection)

    async def _connection(self, stream: SocketStream) -> None:
        async with stream:
            try:
                uid = peer_uid(stream)
            except OSError:
                return
            reader = BufferedByteReceiveStream(stream)
            while True:
                try:
                    with anyio.fail_after(self.timeout):
                        line = await reader.receive_until(b"\n", self.max_bytes)
                except anyio.IncompleteRead:
                    return  # client hung up
                except anyio.DelimiterNotFound:
                    await self._send(
                        stream,
                        protocol.error_reply(
                            None, RequestTooLarge(f"request exceeds {self.max_bytes} bytes")
                        ),
                    )
                    return
                except TimeoutError:
                    await self._send(
                        stream,
                        protocol.error_reply(
                            None, RequestTimeout(f"no complete request within {self.timeout:g}s")
                        ),
                    )
                    return
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return
                if not await self._one(stream, line, uid):
                    return

    async def _one(self, stream: SocketStream, line: bytes, uid: int) -> bool:
        try:
            req = protocol.parse_request(line)
        except FleetError as exc:
            return await self._send(stream, protocol.error_reply(protocol.request_id(line), exc))
        if req.definition.mutating and uid not in self.allowed:
            err = PermissionDenied(
                f"uid {uid} may not run '{req.cmd}': add it to settings.operators"
            )
            log.warning("control.denied", uid=uid, cmd=req.cmd)
            return await self._send(stream, protocol.error_reply(req.id, err))
        if req.cmd == "events" and req.args.get("follow"):
            return await self._stream(stream, req, uid)
        try:
            result = await self.handler(req, uid)
        except FleetError as exc:
            return await self._send(stream, protocol.error_reply(req.id, exc))
        except Exception as exc:  # a handler bug must not kill the server
            log.exception("control.handler.crashed", cmd=req.cmd)
            return await self._send(
                stream,
                protocol.error_reply(req.id, FleetError(f"internal error in {req.cmd}: {exc}")),
            )
        return await self._send(stream, protocol.ok_reply(req.id, result))

    async def _stream(self, stream: SocketStream, req: protocol.Request, uid: int) -> bool:
        try:
            events = self.streamer(req, uid)
            if not await self._send(stream, protocol.ok_reply(req.id, {"follow": True})):
                return False
            async for event in events:
                if not await self._send(stream, protocol.event_line(req.id, event)):
                    return False
        except FleetError as exc:
            await self._send(stream, protocol.error_reply(req.id, exc))
        return False

    async def _send(self, stream: SocketStream, data: bytes) -> bool:
        try:
            await stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return False
        return True
