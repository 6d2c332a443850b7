"""Render an agent's command and environment from its roster template. Pure.

Templates use ``{name}`` placeholders (``str.format`` syntax; ``{{`` for a brace)
from a fixed set: ``agent``, ``host``, ``workdir``, ``heartbeat_file``,
``heartbeat_interval``, ``provider``, ``model``. An unknown placeholder is a
roster error, found by ``fleetd --check``.

Quoting: a command written as a list is an argv; each element is formatted on its
own and stays one argument, so a value can never split or inject. A command
written as one string runs as ``/bin/sh -c STRING``; every substituted value is
``shlex.quote``d first, so only what the operator wrote in the roster is shell
syntax.
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping

from fleetd.config import AgentSpec, ProviderSpec
from fleetd.errors import ConfigError

PLACEHOLDERS = frozenset(
    {"agent", "host", "workdir", "heartbeat_file", "heartbeat_interval", "provider", "model"}
)
_FORMATTER = string.Formatter()


def template_fields(template: str) -> set[str]:
    fields: set[str] = set()
    for _literal, field, _spec, _conv in _FORMATTER.parse(template):
        if field is not None:
            fields.add(field)
    return fields


def check_template(template: str, where: str) -> None:
    try:
        unknown = template_fields(template) - PLACEHOLDERS
    except ValueError as exc:
        raise ConfigError(f"{where}: bad template {template!r}: {exc}") from None
    if unknown:
        raise ConfigError(
            f"{where}: unknown placeholder(s) {', '.join(sorted('{' + u + '}' for u in unknown))}"
            f"; allowed: {', '.join(sorted(PLACEHOLDERS))}"
        )


def variables(
    spec: AgentSpec, provider: ProviderSpec | None, workdir: str, heartbeat_file: str | None
) -> dict[str, str]:
    return {
        "agent": spec.name,
        "host": spec.host,
        "workdir": workdir,
        "heartbeat_file": heartbeat_file or "",
        "heartbeat_interval": f"{spec.heartbeat_interval:g}",
        "provider": provider.name if provider else "",
        "model": (provider.model if provider and provider.model else spec.model) or "",
    }


def render_argv(command: tuple[str, ...] | str, values: Mapping[str, str]) -> list[str]:
    if isinstance(command, str):
        quoted = {k: shlex.quote(v) for k, v in values.items()}
        return ["/bin/sh", "-c", command.format_map(quoted)]
    return [part.format_map(values) for part in command]


def render_env(
    spec: AgentSpec,
    values: Mapping[str, str],
    provider_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The agent's environment: roster env, provider env, then fleetd's own keys.

    fleetd's keys come last so an agent always knows who it is and where to beat,
    without relying on tmux's global environment.
    """
    env = {k: v.format_map(values) for k, v in spec.env.items()}
    if provider_env:
        env.update(provider_env)
    env["FLEETD_AGENT"] = spec.name
    if values.get("heartbeat_file"):
        env["FLEETD_HEARTBEAT_FILE"] = values["heartbeat_file"]
        env["FLEETD_HEARTBEAT_INTERVAL"] = values["heartbeat_interval"]
    return env


def check_agent(spec: AgentSpec) -> None:
    """Raise ConfigError if any template of the agent uses an unknown placeholder."""
    where = f"agents.{spec.name}"
    parts = [spec.command] if isinstance(spec.command, str) else list(spec.command)
    for part in parts:
        check_template(part, f"{where}.command")
    for key, value in spec.env.items():
        check_template(value, f"{where}.env.{key}")
    if spec.heartbeat_file:
        check_template(spec.heartbeat_file, f"{where}.heartbeat_file")


def heartbeat_path(spec: AgentSpec) -> str | None:
    if spec.heartbeat_file is None:
        return None
    return spec.heartbeat_file.format_map({"agent": spec.name, "host": spec.host})
