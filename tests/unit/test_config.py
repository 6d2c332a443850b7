"""Roster and settings validation: what a valid roster becomes, and how an invalid
one is refused (file, key path, reason)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from fleetd.config import Roster, load_roster, parse_roster
from fleetd.errors import ConfigError, ConfigNotFound

SOURCE = "/etc/fleetd/fleet.toml"

VALID: dict[str, Any] = {
    "settings": {"poll_interval": "500ms", "state_dir": "/srv/fleetd-state"},
    "defaults": {"heartbeat_interval": "15s", "stop_timeout": "2m", "restart": "on-failure"},
    "hosts": {
        "vps1": {
            "address": "10.0.0.2",
            "known_hosts": "/etc/fleetd/known_hosts",
            "connect_timeout": 7,
        }
    },
    "providers": {"anthropic": {"model": "claude-sonnet", "cooldown": "1h30m"}},
    "agents": {
        "coder": {
            "command": ["claude", "--model", "{model}"],
            "heartbeat_file": "/tmp/hb/{agent}",
            "providers": ["anthropic"],
        },
        "reviewer": {
            "host": "vps1",
            "command": "pi --once",
            "restart": "always",
            "recovery_settle": 12.5,
            "backoff": {"initial": "500ms", "cap": "1m"},
            "env": {"PI_MODE": "review", "_X1": "y"},
        },
    },
}


@pytest.fixture(autouse=True)
def _no_ambient_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's shell may export FLEETD_* settings; these tests define their own.
    for name in ("STATE_DIR", "POLL_INTERVAL", "OPERATORS", "RUNTIME_DIR"):
        monkeypatch.delenv(f"FLEETD_{name}", raising=False)


def roster_with(**agent: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    data["agents"]["coder"].update(agent)
    return data


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_roster(data, SOURCE)
    err = info.value
    assert err.code == "config.invalid"
    assert err.details.get("file") == SOURCE
    return err.message


def assert_names(message: str, key_path: str, reason: str) -> None:
    line = next((ln for ln in message.splitlines() if key_path in ln), None)
    assert line is not None, f"{key_path!r} not in {message!r}"
    assert line.startswith(SOURCE + ": "), line
    assert reason.lower() in line.lower(), line


# --- a valid roster -----------------------------------------------------------------


def test_valid_roster_applies_defaults_and_parses_durations() -> None:
    r = parse_roster(VALID, SOURCE)
    assert isinstance(r, Roster)
    assert r.settings.poll_interval == 0.5
    assert r.settings.state_dir == Path("/srv/fleetd-state")
    assert r.settings.db_path == Path("/srv/fleetd-state/events.sqlite3")
    assert set(r.hosts) == {"local", "vps1"}
    assert r.hosts["local"].kind == "local"
    assert r.hosts["vps1"].kind == "ssh"
    assert r.hosts["vps1"].connect_timeout == 7.0
    assert r.providers["anthropic"].cooldown == 5400.0

    coder = r.agents["coder"]
    assert coder.command == ("claude", "--model", "{model}")
    assert coder.host == "local"
    assert coder.restart == "on-failure"  # from [defaults]
    assert coder.stop_timeout == 120.0
    assert coder.heartbeat_interval == 15.0
    assert coder.staleness == 45.0
    assert coder.start_grace == 45.0  # default grace: one staleness period
    assert coder.recovery_settle == 30.0
    assert (coder.tmux_socket, coder.tmux_session, coder.window) == ("fleetd", "fleet", "coder")
    assert coder.providers == ("anthropic",)
    assert coder.backoff.initial == 1.0 and coder.backoff.cap == 60.0
    assert coder.intensity.max_restarts == 5 and coder.intensity.window == 120.0

    reviewer = r.agents["reviewer"]
    assert reviewer.command == "pi --once"
    assert reviewer.restart == "always"
    assert reviewer.recovery_settle == 12.5
    assert reviewer.backoff.initial == 0.5
    assert reviewer.backoff.cap == 60.0
    assert reviewer.backoff.factor == 2.0
    assert reviewer.heartbeat_file is None
    assert [a.name for a in r.agents_on("vps1")] == ["reviewer"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("15s", 15.0),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        (90, 90.0),
        (2.5, 2.5),
        ("7", 7.0),
    ],
)
def test_durations_in_roster(value: Any, seconds: float) -> None:
    r = parse_roster(roster_with(stop_timeout=value), SOURCE)
    assert r.agents["coder"].stop_timeout == seconds


def test_same_window_name_is_fine_on_other_hosts_or_sessions() -> None:
    data = copy.deepcopy(VALID)
    data["agents"]["reviewer"]["window"] = "coder"  # on vps1, not local
    data["agents"]["third"] = {"command": ["x"], "window": "coder", "tmux_session": "other"}
    assert set(parse_roster(data, SOURCE).agents) == {"coder", "reviewer", "third"}


# --- invalid rosters ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "key_path", "reason"),
    [
        ({"restart": "sometimes"}, "agents.coder.restart", "'always', 'on-failure' or 'never'"),
        ({"stop_timeout": -5}, "agents.coder.stop_timeout", "negative"),
        ({"stop_timeout": "-5s"}, "agents.coder.stop_timeout", "not a duration"),
        ({"heartbeat_interval": "soon"}, "agents.coder.heartbeat_interval", "not a duration"),
        ({"restrat": "always"}, "agents.coder.restrat", "extra inputs are not permitted"),
        ({"backoff": {"initial": "1s", "jitterr": 0.1}}, "agents.coder.backoff.jitterr", "extra"),
        ({"host": "nowhere"}, "agents.coder.host", "no host named 'nowhere'"),
        (
            {"providers": ["anthropic", "mystery"]},
            "agents.coder.providers",
            "no provider named 'mystery'",
        ),
        ({"env": {"1BAD": "x"}}, "agents.coder.env", "environment variable name '1BAD'"),
        ({"env": {"A-B": "x"}}, "agents.coder.env", "is not valid"),
        ({"env": {"A B": "x"}}, "agents.coder.env", "is not valid"),
        (
            {"backoff": {"initial": "10s", "cap": "5s"}},
            "agents.coder.backoff",
            "cap must be at least",
        ),
        ({"command": ""}, "agents.coder.command", "must not be empty"),
        ({"command": "   "}, "agents.coder.command", "must not be empty"),
        ({"command": []}, "agents.coder.command", "must not be empty"),
        ({"window": "a;b"}, "agents.coder.window", "not allowed"),
        ({"tmux_socket": "../x"}, "agents.coder.tmux_socket", "not allowed"),
    ],
)
def test_invalid_agent_fields(agent: dict[str, Any], key_path: str, reason: str) -> None:
    assert_names(refused(roster_with(**agent)), key_path, reason)


@pytest.mark.parametrize(
    "name", ["bad;name", "$(id)", "a b", "#(id)", "-rf", "_x", "", "x" * 65, "é"]
)
def test_agent_names_with_shell_or_tmux_syntax_are_refused(name: str) -> None:
    data = copy.deepcopy(VALID)
    data["agents"][name] = {"command": ["x"]}
    assert_names(refused(data), f"agents.{name}", "agent name")


def test_two_agents_on_one_window_are_refused() -> None:
    data = copy.deepcopy(VALID)
    data["agents"]["helper"] = {"command": ["x"], "window": "coder"}
    message = refused(data)
    assert_names(message, "agents.helper.window", "already used by agent 'coder'")


def test_ssh_host_needs_known_hosts() -> None:
    data = copy.deepcopy(VALID)
    del data["hosts"]["vps1"]["known_hosts"]
    assert_names(refused(data), "hosts.vps1", "known_hosts")


def test_bad_host_and_provider_names_are_refused() -> None:
    data = copy.deepcopy(VALID)
    data["hosts"]["bad host"] = {"address": "h", "known_hosts": "/k"}
    data["providers"]["$(id)"] = {}
    message = refused(data)
    assert_names(message, "hosts.bad host", "host name")
    assert_names(message, "providers.$(id)", "provider name")


@pytest.mark.parametrize(
    ("section", "key", "key_path"),
    [
        ("settings", "poll_intervall", "settings.poll_intervall"),
        ("defaults", "restat", "defaults.restat"),
        (None, "agent", "agent"),
    ],
)
def test_unknown_keys_outside_agents(section: str | None, key: str, key_path: str) -> None:
    data = copy.deepcopy(VALID)
    if section is None:
        data[key] = {}
    else:
        data.setdefault(section, {})[key] = 1
    assert_names(refused(data), key_path, "extra inputs are not permitted")


def test_every_problem_is_reported_at_once() -> None:
    data = copy.deepcopy(VALID)
    data["agents"]["coder"]["host"] = "nowhere"
    data["agents"]["reviewer"]["providers"] = ["mystery"]
    message = refused(data)
    assert_names(message, "agents.coder.host", "no host named")
    assert_names(message, "agents.reviewer.providers", "no provider named")


def test_agent_name_with_trailing_newline_is_refused() -> None:
    data = copy.deepcopy(VALID)
    data["agents"]["coder\n"] = {"command": ["x"], "window": "w2"}
    refused(data)


def test_env_name_with_trailing_newline_is_refused() -> None:
    refused(roster_with(env={"FOO\n": "1"}))


# --- files ----------------------------------------------------------------------------


def test_load_roster_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigNotFound) as info:
        load_roster(missing)
    assert info.value.code == "config.not_found"
    assert isinstance(info.value, ConfigError)
    assert str(missing) in info.value.message


def test_load_roster_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[agents.coder]\ncommand = ["x"]\nrestart = always\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_roster(path)
    err = info.value
    assert type(err) is ConfigError
    assert err.message.startswith(f"{path}: not valid TOML")
    assert "line 3" in err.message
    assert err.details["file"] == str(path)


def test_load_roster_validation_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[agents.coder]\ncommand = ["x"]\nrestart = "sometimes"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_roster(path)
    assert info.value.message.startswith(f"{path}: agents.coder.restart: ")


def test_load_roster_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_bytes(b"[agents.\xff]\n")
    with pytest.raises(ConfigError) as info:
        load_roster(path)
    assert str(path) in info.value.message


def test_load_roster_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[settings]\nstate_dir = "/srv/s"\n\n'
        '[agents.coder]\ncommand = ["claude"]\nstop_timeout = "1h30m"\n',
        encoding="utf-8",
    )
    r = load_roster(path)
    assert r.path == path.resolve()
    assert r.agents["coder"].stop_timeout == 5400.0


# --- FLEETD_* environment overrides ------------------------------------------------------


def test_env_overrides_settings_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEETD_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("FLEETD_POLL_INTERVAL", "2s")
    monkeypatch.setenv("FLEETD_OPERATORS", "[1000, 1001]")
    s = parse_roster(VALID, SOURCE).settings
    assert s.state_dir == tmp_path  # the file says /srv/fleetd-state
    assert s.poll_interval == 2.0  # the file says 500ms
    assert s.operators == (1000, 1001)
    assert s.runtime_dir == Path("/run/fleetd")  # untouched default


def test_env_override_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETD_POLL_INTERVAL", "-3")
    assert_names(refused(VALID), "settings.poll_interval", "negative")


def test_unrelated_fleetd_env_vars_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # CI exports FLEETD_TEST_STRICT; it is not a setting and must not break loading.
    monkeypatch.setenv("FLEETD_TEST_STRICT", "1")
    assert parse_roster(VALID, SOURCE).settings.poll_interval == 0.5


def test_shipped_example_roster_is_valid() -> None:
    # etc/fleetd.toml documents every option; it must load exactly as shipped,
    # templates included (what `fleetd --check` does).
    from pathlib import Path

    from fleetd.daemon import check_roster

    example = Path(__file__).resolve().parents[2] / "etc" / "fleetd.toml"
    roster = check_roster(str(example))
    assert "coder" in roster.agents
    documented = example.read_text()
    from fleetd.config import AgentDefaults, Settings

    for name in (*Settings.model_fields, *AgentDefaults.model_fields):
        assert f"{name} =" in documented, f"etc/fleetd.toml does not document {name}"


def test_toml_value_round_trips_hostile_strings() -> None:
    import tomllib

    from fleetd.config import toml_value

    value = {
        "s": "a\nb\t\"q\" \\ '; touch /tmp/pwned #' $(id) #(id) \x01",
        "l": [1, 2.5, True, "x"],
        "t": {"k": "v", "n": 3},
    }
    text = "\n".join(f"{k} = {toml_value(v)}" for k, v in value.items())
    assert tomllib.loads(text) == value
