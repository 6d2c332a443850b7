"""The control protocol: newline-delimited JSON, one request, one reply. Pure.

Request::

    {"v": 1, "id": 7, "cmd": "restart", "args": {"agent": "coder"}}

Reply::

    {"v": 1, "id": 7, "ok": true, "result": {...}}
    {"v": 1, "id": 7, "ok": false, "error": {"code": "agent.unknown", "message": "..."}}

``events`` with ``follow: true`` streams: after the reply, one line per event,
``{"v": 1, "id": 7, "event": {...}}``, until the client hangs up.

This module is shared by the daemon and ``fleetctl`` (and any web UI): the
command table below is the schema. It imports nothing heavy, so ``fleetctl``
starts fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fleetd.errors import (
    BadArguments,
    FleetError,
    ProtocolError,
    UnknownCommand,
    UnsupportedVersion,
)

VERSION = 1


@dataclass(frozen=True, slots=True)
class CommandDef:
    name: str
    mutating: bool
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    help: str = ""


COMMANDS: dict[str, CommandDef] = {
    c.name: c
    for c in (
        CommandDef("ping", False, help="is fleetd alive"),
        CommandDef("ps", False, optional=("host",), help="every agent and its state"),
        CommandDef("show", False, ("agent",), help="one agent in detail"),
        CommandDef("logs", False, ("agent",), ("limit",), help="forensics of an agent"),
        CommandDef("events", False, optional=("agent", "after_id", "limit", "follow", "kinds")),
        CommandDef("hosts", False, help="hosts, connection state and health"),
        CommandDef("providers", False, help="provider health and who uses each"),
        CommandDef("uptime", False, optional=("agent", "days")),
        CommandDef("report", False, optional=("days",)),
        CommandDef("start", True, ("agent",)),
        CommandDef("stop", True, ("agent",)),
        CommandDef("restart", True, ("agent",)),
        CommandDef("pause", True, ("agent",)),
        CommandDef("resume", True, ("agent",)),
        CommandDef("reload", True),
        CommandDef("failover", True, ("agent",), ("to",)),
        CommandDef("failback", True, ("agent",)),
        CommandDef("provider", True, ("provider", "action")),
    )
}


@dataclass(frozen=True, slots=True)
class Request:
    id: Any
    cmd: str
    args: dict[str, Any]

    @property
    def definition(self) -> CommandDef:
        return COMMANDS[self.cmd]


def parse_request(line: bytes) -> Request:
    """Parse one request line; raise a ProtocolError subclass with a stable code."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError("request is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("request must be a JSON object")
    if type(obj.get("v")) is not int or obj.get("v") != VERSION:
        raise UnsupportedVersion(
            f"protocol version {obj.get('v')!r} is not supported; use {VERSION}"
        )
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("request has no 'cmd' string")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise BadArguments("'args' must be an object")
    if cmd not in COMMANDS:
        raise UnknownCommand(f"unknown command {cmd!r}; known: {', '.join(sorted(COMMANDS))}")
    d = COMMANDS[cmd]
    missing = [a for a in d.required if a not in args]
    if missing:
        raise BadArguments(f"{cmd}: missing argument(s) {', '.join(missing)}")
    extra = [a for a in args if a not in d.required and a not in d.optional]
    if extra:
        raise BadArguments(f"{cmd}: unexpected argument(s) {', '.join(sorted(extra))}")
    return Request(obj.get("id"), cmd, args)


def request_id(line: bytes) -> Any:
    """Best effort: the id of a request that failed to parse, for the error reply."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return obj.get("id") if isinstance(obj, dict) else None


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def ok_reply(rid: Any, result: Any) -> bytes:
    return encode({"v": VERSION, "id": rid, "ok": True, "result": result})


def error_reply(rid: Any, err: FleetError) -> bytes:
    return encode({"v": VERSION, "id": rid, "ok": False, "error": err.to_dict()})


def event_line(rid: Any, event: dict[str, Any]) -> bytes:
    return encode({"v": VERSION, "id": rid, "event": event})


def make_request(rid: Any, cmd: str, args: dict[str, Any] | None = None) -> bytes:
    return encode({"v": VERSION, "id": rid, "cmd": cmd, "args": args or {}})
