"""Rendering an agent's command and environment: values never become syntax.

The string-command cases run the rendered argv for real (``/bin/sh -c``) in a
temporary directory and check that the hostile value was printed literally and
that nothing it tried to create exists.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from fleetd.config import AgentSpec, parse_roster
from fleetd.errors import ConfigError
from fleetd.render import (
    check_agent,
    heartbeat_path,
    render_argv,
    render_env,
    variables,
)

HOSTILE = [
    "'; touch pwned #",
    "$(touch pwned)",
    "`touch pwned`",
    '"; touch pwned; echo "',
    "a b\tc\nd",
    "x && touch pwned",
    "*",
    "-n",
    "{agent}",
    "",
]


def make_spec(**agent: Any) -> AgentSpec:
    body: dict[str, Any] = {"command": ["claude", "--model", "{model}"], **agent}
    return parse_roster({"agents": {"coder": body}}).agents["coder"]


def values_with(model: str) -> dict[str, str]:
    spec = make_spec(heartbeat_file="/run/hb/{agent}", model=model)
    return variables(spec, None, "/srv/work", heartbeat_path(spec))


def run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    return done.stdout


@pytest.mark.parametrize("value", HOSTILE)
def test_list_command_elements_stay_single_arguments(value: str, tmp_path: Path) -> None:
    argv = render_argv(("printf", "%s|", "--model={model}", "{model}"), values_with(value))
    assert argv == ["printf", "%s|", f"--model={value}", value]
    assert run(argv, tmp_path) == f"--model={value}|{value}|"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", HOSTILE)
def test_string_command_quotes_every_value(value: str, tmp_path: Path) -> None:
    argv = render_argv("printf '%s|' {model} --model={model}", values_with(value))
    assert argv[:2] == ["/bin/sh", "-c"]
    assert len(argv) == 3
    assert run(argv, tmp_path) == f"{value}|--model={value}|"
    assert list(tmp_path.iterdir()) == []


def test_string_command_keeps_the_operators_own_shell_syntax(tmp_path: Path) -> None:
    argv = render_argv("echo {agent} > out.txt && echo done", {"agent": "coder"})
    assert run(argv, tmp_path) == "done\n"
    assert (tmp_path / "out.txt").read_text() == "coder\n"


def test_variables() -> None:
    spec = make_spec(heartbeat_file="/run/hb/{agent}.hb", model="sonnet", heartbeat_interval="7.5s")
    values = variables(spec, None, "/srv/work", heartbeat_path(spec))
    assert values == {
        "agent": "coder",
        "host": "local",
        "workdir": "/srv/work",
        "heartbeat_file": "/run/hb/coder.hb",
        "heartbeat_interval": "7.5",
        "provider": "",
        "model": "sonnet",
    }
    no_hb = make_spec()
    assert heartbeat_path(no_hb) is None
    assert variables(no_hb, None, "/w", None)["heartbeat_file"] == ""


@pytest.mark.parametrize(
    ("agent", "where", "placeholder"),
    [
        ({"command": ["claude", "{modle}"]}, "agents.coder.command", "{modle}"),
        ({"command": "claude --model {modle}"}, "agents.coder.command", "{modle}"),
        ({"command": ["x", "{agent.__class__}"]}, "agents.coder.command", "{agent.__class__}"),
        ({"command": ["x", "{0}"]}, "agents.coder.command", "{0}"),
        ({"command": ["x", "{}"]}, "agents.coder.command", "{}"),
        ({"command": ["x"], "env": {"K": "{secret}"}}, "agents.coder.env.K", "{secret}"),
        (
            {"command": ["x"], "heartbeat_file": "/hb/{agentt}"},
            "agents.coder.heartbeat_file",
            "{agentt}",
        ),
    ],
)
def test_unknown_placeholder_is_a_config_error(
    agent: dict[str, Any], where: str, placeholder: str
) -> None:
    with pytest.raises(ConfigError) as info:
        check_agent(make_spec(**agent))
    message = info.value.message
    assert message.startswith(where + ": ")
    assert placeholder in message
    assert info.value.code == "config.invalid"


def test_bad_template_syntax_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"agents\.coder\.command: bad template"):
        check_agent(make_spec(command=["x", "{model"]))


def test_known_placeholders_and_escaped_braces_pass_the_check() -> None:
    spec = make_spec(
        command="run {agent} {host} {workdir} {heartbeat_file} {heartbeat_interval} "
        "{provider} {model} '{{literal}}'",
        env={"A": "{agent}"},
        heartbeat_file="/hb/{agent}",
    )
    check_agent(spec)


def test_env_has_fleetd_keys_and_they_win() -> None:
    spec = make_spec(
        heartbeat_file="/run/hb/{agent}",
        heartbeat_interval="5s",
        env={"WORK": "{workdir}/x", "FLEETD_AGENT": "impostor", "PLAIN": "$(id)"},
    )
    values = variables(spec, None, "/srv/w", heartbeat_path(spec))
    env = render_env(spec, values, {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"})
    assert env == {
        "WORK": "/srv/w/x",
        "FLEETD_AGENT": "coder",
        "PLAIN": "$(id)",  # the environment is not a shell: no quoting, no expansion
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "FLEETD_HEARTBEAT_FILE": "/run/hb/coder",
        "FLEETD_HEARTBEAT_INTERVAL": "5",
    }


def test_env_without_heartbeat_file() -> None:
    spec = make_spec()
    env = render_env(spec, variables(spec, None, "/w", None))
    assert env == {"FLEETD_AGENT": "coder"}
