"""One error tree for fleetd, with stable codes.

Every error fleetd raises on purpose is a :class:`FleetError`. Families say who is
at fault (the roster, an agent, a host, a provider, a control client). Each class
has a stable ``code`` string: the control socket returns it, ``fleetctl`` prints
it and exits with the family's exit status, and tests match on it. Codes are a
contract: never rename one, only add.

Third-party exceptions are translated where they enter fleetd (tmux output in
``tmux``, asyncssh in ``hosts.ssh``, sqlite in ``store``); cancellation is never
caught here.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FleetError(Exception):
    """Base of every error fleetd raises deliberately."""

    code: ClassVar[str] = "internal"
    exit_status: ClassVar[int] = 1

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


# --- roster / settings -------------------------------------------------------


class ConfigError(FleetError):
    """The roster or the settings are invalid; nothing was changed."""

    code = "config.invalid"
    exit_status = 2


class ConfigNotFound(ConfigError):
    code = "config.not_found"


# --- agents --------------------------------------------------------------------


class AgentError(FleetError):
    code = "agent.error"


class UnknownAgent(AgentError):
    code = "agent.unknown"


class IllegalTransition(AgentError):
    """The lifecycle table does not allow this move; a bug in the caller."""

    code = "agent.illegal_transition"


class AgentBusy(AgentError):
    code = "agent.busy"


class InvalidCommand(AgentError):
    """The command does not apply to the agent in its current state."""

    code = "agent.invalid_command"


# --- hosts ---------------------------------------------------------------------


class HostError(FleetError):
    code = "host.error"


class HostUnreachable(HostError):
    code = "host.unreachable"


class HostKeyRejected(HostError):
    code = "host.key_rejected"


class CommandFailed(HostError):
    code = "host.command_failed"


class CommandTimeout(HostError):
    code = "host.command_timeout"


class TmuxError(HostError):
    code = "host.tmux"


class RemoteOutputInvalid(HostError):
    code = "host.bad_output"


# --- providers -----------------------------------------------------------------


class ProviderError(FleetError):
    code = "provider.error"


class UnknownProvider(ProviderError):
    code = "provider.unknown"


# --- control protocol ---------------------------------------------------------


class ProtocolError(FleetError):
    code = "request.invalid"
    exit_status = 3


class RequestTooLarge(ProtocolError):
    code = "request.too_large"


class RequestTimeout(ProtocolError):
    code = "request.timeout"


class UnknownCommand(ProtocolError):
    code = "request.unknown_command"


class BadArguments(ProtocolError):
    code = "request.bad_arguments"


class UnsupportedVersion(ProtocolError):
    code = "request.unsupported_version"


class PermissionDenied(ProtocolError):
    code = "request.permission_denied"
    exit_status = 4


class DaemonUnavailable(FleetError):
    """fleetctl could not reach fleetd at all."""

    code = "daemon.unavailable"
    exit_status = 5


class StoreError(FleetError):
    code = "store.error"


def error_class_for(code: str) -> type[FleetError]:
    """Map a wire code back to its class (for fleetctl); unknown codes stay generic."""
    stack: list[type[FleetError]] = [FleetError]
    while stack:
        cls = stack.pop()
        if cls.code == code:
            return cls
        stack.extend(cls.__subclasses__())
    return FleetError
