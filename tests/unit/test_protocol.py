"""The control protocol: request parsing with stable error codes, one-line replies,
and codes mapped back to error classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetd import errors
from fleetd.control import protocol
from fleetd.control.protocol import (
    COMMANDS,
    VERSION,
    encode,
    error_reply,
    event_line,
    make_request,
    ok_reply,
    parse_request,
    request_id,
)
from fleetd.errors import (
    BadArguments,
    FleetError,
    ProtocolError,
    UnknownAgent,
    UnknownCommand,
    UnsupportedVersion,
    error_class_for,
)


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def test_valid_request_parses() -> None:
    req = parse_request(make_request(7, "restart", {"agent": "coder"}))
    assert (req.id, req.cmd, req.args) == (7, "restart", {"agent": "coder"})
    assert req.definition.mutating is True
    ping = parse_request(line({"v": 1, "id": "a", "cmd": "ping"}))  # args may be omitted
    assert (ping.id, ping.cmd, ping.args, ping.definition.mutating) == ("a", "ping", {}, False)
    ev = parse_request(
        line({"v": 1, "id": 1, "cmd": "events", "args": {"follow": True, "limit": 5}})
    )
    assert ev.args == {"follow": True, "limit": 5}


def test_every_command_accepts_its_required_arguments() -> None:
    for name, d in COMMANDS.items():
        args = {a: "x" for a in d.required}
        assert parse_request(make_request(1, name, args)).cmd == name


@pytest.mark.parametrize(
    ("raw", "cls", "code"),
    [
        (b"not json\n", ProtocolError, "request.invalid"),
        (b'{"v": 1, \n', ProtocolError, "request.invalid"),
        (b"\xff\xfe\xfa\n", ProtocolError, "request.invalid"),
        (b"", ProtocolError, "request.invalid"),
        (line([1, 2]), ProtocolError, "request.invalid"),
        (line("ping"), ProtocolError, "request.invalid"),
        (line(None), ProtocolError, "request.invalid"),
        (line({"v": 2, "id": 1, "cmd": "ping"}), UnsupportedVersion, "request.unsupported_version"),
        (line({"id": 1, "cmd": "ping"}), UnsupportedVersion, "request.unsupported_version"),
        (
            line({"v": "1", "id": 1, "cmd": "ping"}),
            UnsupportedVersion,
            "request.unsupported_version",
        ),
        (line({"v": 1, "id": 1}), ProtocolError, "request.invalid"),
        (line({"v": 1, "id": 1, "cmd": 5}), ProtocolError, "request.invalid"),
        (line({"v": 1, "id": 1, "cmd": "rm -rf"}), UnknownCommand, "request.unknown_command"),
        (line({"v": 1, "id": 1, "cmd": "__init__"}), UnknownCommand, "request.unknown_command"),
        (line({"v": 1, "id": 1, "cmd": "restart"}), BadArguments, "request.bad_arguments"),
        (
            line({"v": 1, "id": 1, "cmd": "restart", "args": {}}),
            BadArguments,
            "request.bad_arguments",
        ),
        (
            line({"v": 1, "id": 1, "cmd": "restart", "args": {"agent": "c", "command": "sh"}}),
            BadArguments,
            "request.bad_arguments",
        ),
        (
            line({"v": 1, "id": 1, "cmd": "ping", "args": {"x": 1}}),
            BadArguments,
            "request.bad_arguments",
        ),
        (
            line({"v": 1, "id": 1, "cmd": "ping", "args": [1]}),
            BadArguments,
            "request.bad_arguments",
        ),
    ],
)
def test_bad_requests_raise_stable_codes(raw: bytes, cls: type[ProtocolError], code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(raw)
    err = info.value
    assert type(err) is cls
    assert err.code == code
    assert err.message


def test_error_messages_name_the_problem() -> None:
    with pytest.raises(BadArguments, match=r"missing argument.*agent"):
        parse_request(line({"v": 1, "id": 1, "cmd": "restart", "args": {}}))
    with pytest.raises(BadArguments, match=r"unexpected argument.*command"):
        parse_request(
            line({"v": 1, "id": 1, "cmd": "restart", "args": {"agent": "c", "command": "x"}})
        )
    with pytest.raises(UnknownCommand, match="'nuke'"):
        parse_request(line({"v": 1, "id": 1, "cmd": "nuke"}))


def test_deeply_nested_request_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_request(b"[" * 5000 + b"\n")


def test_request_id_best_effort() -> None:
    assert request_id(line({"v": 9, "id": 42, "cmd": "ping"})) == 42
    assert request_id(line([1])) is None
    assert request_id(b"garbage") is None


def test_replies_are_one_line() -> None:
    tricky: dict[str, Any] = {"text": "a\nb\r\nc\u2028d", "path": Path("/srv/x"), "n": [1, 2]}
    ok = ok_reply(3, tricky)
    err = error_reply(4, UnknownAgent("no agent 'x\ny'", agent="x\ny"))
    ev = event_line(5, {"kind": "agent_dead", "message": "line1\nline2"})
    req = make_request(6, "show", {"agent": "a\nb"})
    for raw in (ok, err, ev, req, encode({"k": "v"})):
        assert raw.endswith(b"\n")
        assert raw.count(b"\n") == 1
        assert b"\r" not in raw

    assert json.loads(ok) == {
        "v": VERSION,
        "id": 3,
        "ok": True,
        "result": {"text": "a\nb\r\nc\u2028d", "path": "/srv/x", "n": [1, 2]},
    }
    assert json.loads(err) == {
        "v": VERSION,
        "id": 4,
        "ok": False,
        "error": {
            "code": "agent.unknown",
            "message": "no agent 'x\ny'",
            "details": {"agent": "x\ny"},
        },
    }
    assert json.loads(ev) == {
        "v": VERSION,
        "id": 5,
        "event": {"kind": "agent_dead", "message": "line1\nline2"},
    }
    assert parse_request(req).args == {"agent": "a\nb"}


def _all_error_classes() -> list[type[FleetError]]:
    out: list[type[FleetError]] = []
    stack: list[type[FleetError]] = [FleetError]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


def test_error_codes_are_unique_and_map_back() -> None:
    classes = [c for c in _all_error_classes() if c.__module__ == errors.__name__]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), codes
    for cls in classes:
        assert error_class_for(cls.code) is cls
    assert error_class_for("request.bad_arguments") is BadArguments
    assert error_class_for("request.unsupported_version") is UnsupportedVersion
    assert error_class_for("no.such.code") is FleetError


def test_error_reply_round_trips_through_error_class_for() -> None:
    raw = error_reply(None, BadArguments("restart: missing argument(s) agent"))
    body = json.loads(raw)["error"]
    assert error_class_for(body["code"]) is BadArguments
    assert body["message"] == "restart: missing argument(s) agent"
    assert "details" not in body


def test_mutating_commands() -> None:
    mutating = {name for name, d in protocol.COMMANDS.items() if d.mutating}
    assert {"start", "stop", "restart", "pause", "resume", "reload"} <= mutating
    assert not {"ping", "ps", "show", "logs", "events", "hosts"} & mutating
