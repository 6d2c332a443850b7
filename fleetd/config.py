"""Roster and settings: load, validate once, freeze.

The roster is a TOML file. It declares daemon settings (``[settings]``), per-agent
defaults (``[defaults]``), hosts, providers and agents. Everything is validated
here, at the edge: durations become seconds, names are checked against a safe
character set, references between sections are resolved. The result is a frozen
:class:`Roster` that the rest of fleetd reads and never mutates.

Settings may be overridden by ``FLEETD_*`` environment variables (pydantic-settings);
the environment wins over the file, so a unit file or a test can move the state
directory without editing the roster. Nothing else in fleetd reads ``os.environ``
for configuration.

An invalid roster raises :class:`fleetd.errors.ConfigError` whose message names the
file, the key path (``agents.coder.restart``) and the reason.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fleetd.durations import parse_duration
from fleetd.errors import ConfigError, ConfigNotFound

# Names end up in tmux targets, file names, SQL rows and journald fields. Restricting
# them here means no later layer has to escape them (tmux still gets '#' doubled).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
NAME_RULE = "1-64 characters: letters, digits, '-' and '_', starting with a letter or digit"

Seconds = Annotated[float, BeforeValidator(parse_duration)]
LOCAL_HOST = "local"


def _check_name(value: str, what: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not allowed: use {NAME_RULE}")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Backoff(_Frozen):
    initial: Seconds = 1.0
    factor: float = Field(2.0, ge=1.0)
    cap: Seconds = 60.0
    jitter: float = Field(0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _cap_not_below_initial(self) -> Backoff:
        if self.cap < self.initial:
            raise ValueError("backoff cap must be at least the initial delay")
        return self


class Intensity(_Frozen):
    """At most ``max_restarts`` restarts within ``window`` seconds, else FATAL."""

    max_restarts: int = Field(5, ge=1)
    window: Seconds = 120.0


class AgentDefaults(_Frozen):
    """Values every agent inherits unless it sets its own."""

    heartbeat_interval: Seconds = 15.0
    staleness_factor: float = Field(3.0, gt=1.0)
    start_grace: Seconds | None = None
    stop_timeout: Seconds = 10.0
    recovery_settle: Seconds = 30.0
    restart: Literal["always", "on-failure", "never"] = "always"
    backoff: Backoff = Backoff()
    intensity: Intensity = Intensity()
    tmux_socket: str = "fleetd"
    tmux_session: str = "fleet"
    drift: Literal["off", "alert", "correct"] = "alert"
    scrollback_lines: int = Field(200, ge=1, le=10000)

    @field_validator("tmux_socket", "tmux_session")
    @classmethod
    def _names(cls, v: str) -> str:
        return _check_name(v, "tmux name")


class AgentSpec(_Frozen):
    """One agent, fully resolved (defaults applied)."""

    name: str
    host: str = LOCAL_HOST
    command: tuple[str, ...] | str
    workdir: str = "~"
    env: dict[str, str] = Field(default_factory=dict)
    tmux_socket: str
    tmux_session: str
    window: str
    heartbeat_file: str | None = None
    heartbeat_interval: float
    staleness_factor: float
    start_grace: float
    stop_timeout: float
    recovery_settle: float = 30.0
    restart: Literal["always", "on-failure", "never"]
    backoff: Backoff
    intensity: Intensity
    providers: tuple[str, ...] = ()
    drift: Literal["off", "alert", "correct"]
    scrollback_lines: int
    # Declared identity, compared with what the agent reports (drift detection).
    runtime: str | None = None
    model: str | None = None

    @property
    def staleness(self) -> float:
        """Seconds after a beat at which the heartbeat is stale."""
        return self.heartbeat_interval * self.staleness_factor


class AgentEntry(_Frozen):
    """An agent as written in the roster: any default may be overridden."""

    host: str = LOCAL_HOST
    command: list[str] | str
    workdir: str = "~"
    env: dict[str, str] = Field(default_factory=dict)
    tmux_socket: str | None = None
    tmux_session: str | None = None
    window: str | None = None
    heartbeat_file: str | None = None
    heartbeat_interval: Seconds | None = None
    staleness_factor: float | None = Field(None, gt=1.0)
    start_grace: Seconds | None = None
    stop_timeout: Seconds | None = None
    recovery_settle: Seconds | None = None
    restart: Literal["always", "on-failure", "never"] | None = None
    backoff: Backoff | None = None
    intensity: Intensity | None = None
    providers: list[str] = Field(default_factory=list)
    drift: Literal["off", "alert", "correct"] | None = None
    scrollback_lines: int | None = Field(None, ge=1, le=10000)
    runtime: str | None = None
    model: str | None = None

    @field_validator("command")
    @classmethod
    def _non_empty(cls, v: list[str] | str) -> list[str] | str:
        if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
            raise ValueError("command must not be empty")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"environment variable name {key!r} is not valid")
        return v

    @field_validator("tmux_socket", "tmux_session", "window")
    @classmethod
    def _names(cls, v: str | None) -> str | None:
        return None if v is None else _check_name(v, "tmux name")


class HealthThresholds(_Frozen):
    disk_free_min_pct: float = Field(10.0, ge=0, le=100)
    mem_available_min_pct: float = Field(5.0, ge=0, le=100)
    load_per_cpu_max: float = Field(4.0, gt=0)
    disk_path: str = "/"


class HostSpec(_Frozen):
    """A machine agents run on. ``local`` always exists; others are reached by SSH."""

    name: str
    kind: Literal["local", "ssh"] = "ssh"
    address: str | None = None
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    known_hosts: str | None = None
    client_keys: tuple[str, ...] = ()
    connect_timeout: Seconds = 10.0
    keepalive_interval: Seconds = 5.0
    keepalive_count: int = Field(3, ge=1)
    max_channels: int = Field(4, ge=1, le=64)
    reconnect_initial: Seconds = 1.0
    reconnect_cap: Seconds = 60.0
    mode: Literal["agentless", "federated"] = "agentless"
    remote_socket: str = "/run/fleetd/control.sock"
    remote_restart_command: tuple[str, ...] = ("systemctl", "restart", "fleetd")
    escalate_after: Seconds | None = None
    escalate_command: tuple[str, ...] = ()
    health: HealthThresholds = HealthThresholds()

    @model_validator(mode="after")
    def _ssh_needs_address(self) -> HostSpec:
        if self.kind == "ssh":
            if not self.address:
                raise ValueError("an ssh host needs 'address'")
            if not self.known_hosts:
                raise ValueError(
                    "an ssh host needs 'known_hosts' (fleetd never accepts unknown host keys)"
                )
        return self


class ProviderSpec(_Frozen):
    """An LLM provider an agent can run against (see the providers section of the README)."""

    name: str
    env: dict[str, str] = Field(default_factory=dict)
    model: str | None = None
    secret_env: tuple[str, ...] = ()
    probe_url: str | None = None
    probe_method: Literal["GET", "HEAD", "POST"] = "GET"
    probe_expect_status: int = 200
    probe_timeout: Seconds = 5.0
    probe_interval: Seconds = 10.0
    failure_threshold: int = Field(3, ge=1)
    failure_window: Seconds = 60.0
    cooldown: Seconds = 30.0
    success_threshold: int = Field(2, ge=1)
    hold_down: Seconds = 60.0
    hold_down_max: Seconds = 3600.0
    failback_max_wait: Seconds = 600.0
    error_statuses: tuple[str, ...] = ("provider_error", "rate_limited")
    error_patterns: tuple[str, ...] = ()

    @field_validator("error_patterns")
    @classmethod
    def _patterns_compile(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            try:
                re.compile(p, re.MULTILINE)
            except re.error as exc:
                raise ValueError(f"{p!r} is not a valid regular expression: {exc}") from None
        return v

    @field_validator("probe_url")
    @classmethod
    def _probe_scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"probe_url {v!r} must be an http:// or https:// URL with a host")
        return v

    @model_validator(mode="after")
    def _secrets_apart(self) -> ProviderSpec:
        for name in self.secret_env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"secret_env: {name!r} is not a valid variable name")
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise ValueError(
                f"{', '.join(both)} in both env and secret_env: a secret's value must come "
                "from fleetd's environment, never from the roster"
            )
        return self


class Settings(BaseSettings):
    """Daemon settings: the roster's ``[settings]`` table, overridden by ``FLEETD_*``."""

    model_config = SettingsConfigDict(env_prefix="FLEETD_", extra="forbid", frozen=True)

    state_dir: Path = Path("/var/lib/fleetd")
    runtime_dir: Path = Path("/run/fleetd")
    socket_mode: int = 0o660
    poll_interval: Seconds = 5.0
    # uids allowed to run mutating commands; root and fleetd's own uid always are.
    operators: tuple[int, ...] = ()
    request_max_bytes: int = Field(65536, ge=1024)
    request_timeout: Seconds = 5.0
    log_format: Literal["auto", "console", "json"] = "auto"
    journal: bool = True
    journal_socket: Path = Path("/run/systemd/journal/socket")
    self_heartbeat_interval: Seconds = 5.0
    max_concurrent_actions: int = Field(16, ge=1)
    metrics_address: str | None = None
    metrics_textfile: Path | None = None
    retention_days: int = Field(90, ge=1)
    # Prefix that starts a tmux server outside fleetd's cgroup (e.g. systemd-run --scope).
    tmux_launcher: tuple[str, ...] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: an override must win over the roster file.
        return (env_settings, init_settings)

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / "control.sock"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "events.sqlite3"

    @property
    def self_heartbeat_path(self) -> Path:
        return self.runtime_dir / "fleetd.heartbeat"

    @property
    def lock_path(self) -> Path:
        return self.runtime_dir / "fleetd.lock"


class Targets(_Frozen):
    """Targets for the phase report."""

    uptime_pct: float = Field(95.0, ge=0, le=100)
    days_at_target_pct: float = Field(90.0, ge=0, le=100)
    utilization_pct: float = Field(50.0, ge=0, le=100)


class Roster(_Frozen):
    path: Path | None = None
    settings: Settings
    defaults: AgentDefaults
    hosts: dict[str, HostSpec]
    providers: dict[str, ProviderSpec]
    agents: dict[str, AgentSpec]
    targets: Targets = Targets()

    def agents_on(self, host: str) -> list[AgentSpec]:
        return [a for a in self.agents.values() if a.host == host]


class _RosterFile(_Frozen):
    settings: dict[str, Any] = Field(default_factory=dict)
    defaults: AgentDefaults = AgentDefaults()
    hosts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    agents: dict[str, AgentEntry] = Field(default_factory=dict)
    targets: Targets = Targets()


def _resolve_agent(name: str, entry: AgentEntry, d: AgentDefaults) -> AgentSpec:
    interval = (
        entry.heartbeat_interval if entry.heartbeat_interval is not None else d.heartbeat_interval
    )
    factor = entry.staleness_factor if entry.staleness_factor is not None else d.staleness_factor
    grace = entry.start_grace if entry.start_grace is not None else d.start_grace
    command: tuple[str, ...] | str = (
        entry.command if isinstance(entry.command, str) else tuple(entry.command)
    )
    return AgentSpec(
        name=name,
        host=entry.host,
        command=command,
        workdir=entry.workdir,
        env=entry.env,
        tmux_socket=entry.tmux_socket or d.tmux_socket,
        tmux_session=entry.tmux_session or d.tmux_session,
        window=entry.window or name,
        heartbeat_file=entry.heartbeat_file,
        heartbeat_interval=interval,
        staleness_factor=factor,
        # Default grace: one full staleness period, so a slow starter is never "hung".
        start_grace=grace if grace is not None else interval * factor,
        stop_timeout=entry.stop_timeout if entry.stop_timeout is not None else d.stop_timeout,
        recovery_settle=(
            entry.recovery_settle if entry.recovery_settle is not None else d.recovery_settle
        ),
        restart=entry.restart or d.restart,
        backoff=entry.backoff or d.backoff,
        intensity=entry.intensity or d.intensity,
        providers=tuple(entry.providers),
        drift=entry.drift or d.drift,
        scrollback_lines=entry.scrollback_lines or d.scrollback_lines,
        runtime=entry.runtime,
        model=entry.model,
    )


def _format_loc(prefix: tuple[str | int, ...], loc: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"


def _validation_message(
    source: str, err: ValidationError, prefix: tuple[str | int, ...] = ()
) -> str:
    lines = []
    for item in err.errors():
        msg = item["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {_format_loc(prefix, item['loc'])}: {msg}")
    return "\n".join(lines)


def parse_roster(data: dict[str, Any], source: str = "<roster>") -> Roster:
    """Validate an already-parsed TOML document. Raises ConfigError."""
    try:
        raw = _RosterFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_message(source, exc), file=source) from None
    problems: list[str] = []

    try:
        settings = Settings(**raw.settings)
    except ValidationError as exc:
        raise ConfigError(_validation_message(source, exc, ("settings",)), file=source) from None

    hosts: dict[str, HostSpec] = {LOCAL_HOST: HostSpec(name=LOCAL_HOST, kind="local")}
    for name, body in raw.hosts.items():
        try:
            _check_name(name, "host name")
            kind = body.get("kind", "local" if name == LOCAL_HOST else "ssh")
            hosts[name] = HostSpec.model_validate({**body, "name": name, "kind": kind})
        except ValidationError as exc:
            problems.append(_validation_message(source, exc, ("hosts", name)))
        except ValueError as exc:
            problems.append(f"{source}: hosts.{name}: {exc}")

    providers: dict[str, ProviderSpec] = {}
    for name, body in raw.providers.items():
        try:
            _check_name(name, "provider name")
            providers[name] = ProviderSpec.model_validate({**body, "name": name})
        except ValidationError as exc:
            problems.append(_validation_message(source, exc, ("providers", name)))
        except ValueError as exc:
            problems.append(f"{source}: providers.{name}: {exc}")

    agents: dict[str, AgentSpec] = {}
    panes: dict[tuple[str, str, str, str], str] = {}
    for name, entry in raw.agents.items():
        where = f"{source}: agents.{name}"
        try:
            _check_name(name, "agent name")
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        spec = _resolve_agent(name, entry, raw.defaults)
        if spec.host not in hosts:
            problems.append(f"{where}.host: no host named {spec.host!r} in [hosts]")
        for p in spec.providers:
            if p not in providers:
                problems.append(f"{where}.providers: no provider named {p!r} in [providers]")
        key = (spec.host, spec.tmux_socket, spec.tmux_session, spec.window)
        if key in panes:
            problems.append(
                f"{where}.window: window {spec.window!r} in session {spec.tmux_session!r} "
                f"is already used by agent {panes[key]!r}"
            )
        panes[key] = name
        agents[name] = spec

    if problems:
        raise ConfigError("\n".join(problems), file=source)
    return Roster(
        settings=settings,
        defaults=raw.defaults,
        hosts=hosts,
        providers=providers,
        agents=agents,
        targets=raw.targets,
    )


def toml_value(value: Any) -> str:
    """One value in TOML syntax, for programs that generate rosters (tests, bench).

    Strings are written as JSON strings, which are valid TOML basic strings with
    every control character escaped.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in value.items()) + " }"
        )
    raise TypeError(f"no TOML form for {value!r}")


def load_roster(path: str | os.PathLike[str]) -> Roster:
    """Read and validate a roster file. Raises ConfigError / ConfigNotFound."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigNotFound(f"{p}: roster file not found", file=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read roster: {exc}", file=str(p)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}", file=str(p)) from None
    roster = parse_roster(data, str(p))
    return roster.model_copy(update={"path": p.resolve()})
