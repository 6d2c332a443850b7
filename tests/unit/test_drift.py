"""Drift detection against the roster, and one incident per drift."""

from __future__ import annotations

from typing import Any

from fleetd.config import AgentSpec, Backoff, Intensity, ProviderSpec
from fleetd.drift import (
    Mismatch,
    declared_program,
    detect,
    drift_step,
    observed,
    same_model,
)
from fleetd.heartbeat import Heartbeat


def agent(**kw: Any) -> AgentSpec:
    base: dict[str, Any] = {
        "name": "coder",
        "command": ("claude", "--model", "{model}"),
        "tmux_socket": "fleetd",
        "tmux_session": "fleet",
        "window": "coder",
        "heartbeat_interval": 15.0,
        "staleness_factor": 3.0,
        "start_grace": 45.0,
        "stop_timeout": 10.0,
        "restart": "always",
        "backoff": Backoff(),
        "intensity": Intensity(),
        "providers": ("anthropic", "openrouter"),
        "drift": "alert",
        "scrollback_lines": 200,
        "runtime": "claude-code",
        "model": "claude-sonnet-4-5",
    }
    base.update(kw)
    return AgentSpec.model_validate(base)


ANTHROPIC = ProviderSpec(name="anthropic", model="claude-sonnet-4-5")
OPENROUTER = ProviderSpec(name="openrouter", model="anthropic/claude-sonnet-4.5")
BARE = ProviderSpec(name="bare")


def hb(**kw: Any) -> Heartbeat:
    return Heartbeat(ts=1.0, pid=10, status="working", **kw)


def test_everything_matches() -> None:
    beat = hb(model="claude-sonnet-4-5-20250929", provider="anthropic", runtime="Claude-Code")
    cmd = ["node", "/usr/local/bin/claude", "--model", "claude-sonnet-4-5"]
    assert detect(agent(), ANTHROPIC, beat, "node", cmd) == ()
    assert observed(agent(), ANTHROPIC, beat, "node", cmd) == {
        "runtime@heartbeat",
        "model@heartbeat",
        "provider@heartbeat",
        "model@cmdline",
        "command@cmdline",
        "command@pane",
    }


def test_unknown_is_not_a_mismatch() -> None:
    assert detect(agent(), ANTHROPIC, None, None, None) == ()
    assert detect(agent(), ANTHROPIC, hb(), None, []) == ()
    assert (
        detect(agent(runtime=None, model=None), None, hb(model="x", runtime="y"), None, None) == ()
    )
    assert observed(agent(), ANTHROPIC, None, None, None) == frozenset()


def test_heartbeat_mismatches() -> None:
    beat = hb(model="claude-opus-4", provider="openrouter", runtime="codex")
    got = detect(agent(), ANTHROPIC, beat, None, None)
    assert set(got) == {
        Mismatch("runtime", "claude-code", "codex"),
        Mismatch("model", "claude-sonnet-4-5", "claude-opus-4"),
        Mismatch("provider", "anthropic", "openrouter"),
    }


def test_declared_model_follows_active_provider() -> None:
    # On openrouter the declared model is openrouter's; the vendor prefix is ignored.
    beat = hb(model="claude-sonnet-4.5", provider="openrouter")
    assert detect(agent(), OPENROUTER, beat, None, None) == ()
    # A provider without its own model falls back to the agent's model.
    assert detect(agent(), BARE, hb(model="claude-sonnet-4-5"), None, None) == ()
    assert detect(agent(), BARE, hb(model="gpt-5"), None, None) == (
        Mismatch("model", "claude-sonnet-4-5", "gpt-5"),
    )


def test_same_model_rules() -> None:
    assert same_model("claude-sonnet-4-5", "CLAUDE-SONNET-4-5")
    assert same_model("claude-sonnet-4-5", "claude-sonnet-4-5-20250929")
    assert same_model("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5")
    assert same_model("gpt-5", "gpt-5@2025")
    assert not same_model("claude-sonnet-4", "claude-sonnet-45")
    assert not same_model("gpt-5", "gpt-5o")


def test_cmdline_model_and_program() -> None:
    got = detect(agent(), ANTHROPIC, None, None, ["claude", "--model=claude-opus-4"])
    assert got == (Mismatch("model", "claude-sonnet-4-5", "claude-opus-4", "cmdline"),)
    got = detect(agent(), ANTHROPIC, None, None, ["/usr/bin/codex", "--full-auto"])
    assert got == (Mismatch("command", "claude", "/usr/bin/codex --full-auto", "cmdline"),)
    # A shell that did not exec the command says nothing about the program.
    assert detect(agent(), ANTHROPIC, None, None, ["/bin/sh", "-c", "claude"]) == ()


def test_pane_showing_a_shell_is_drift() -> None:
    assert detect(agent(), ANTHROPIC, None, "bash", None) == (
        Mismatch("command", "claude", "bash", "pane"),
    )
    assert detect(agent(), ANTHROPIC, None, "node", None) == ()
    # A roster command that is itself a shell cannot be judged from the pane.
    assert detect(agent(command="bash -lc 'claude'"), ANTHROPIC, None, "bash", None) == ()


def test_declared_program() -> None:
    assert declared_program(("claude", "--model", "x")) == "claude"
    assert declared_program("FOO=1 exec /opt/bin/codex --x '{model}'") == "codex"
    assert declared_program(("env", "-i", "A=b", "pi")) == "pi"
    assert declared_program("{agent}-runner") is None
    assert declared_program("'unbalanced") is None


def test_drift_is_one_incident_then_cleared() -> None:
    m1 = Mismatch("model", "claude-sonnet-4-5", "claude-opus-4")
    ev, fix, st = drift_step((), (m1,), "alert", agent="coder")
    assert [e.kind for e in ev] == ["drift_detected"] and ev[0].alert and not fix
    assert "coder" in ev[0].message and "claude-opus-4" in ev[0].message
    assert ev[0].fields["mismatches"][0]["field"] == "model"
    for _ in range(5):
        ev, fix, st = drift_step(st, (m1,), "alert")
        assert ev == [] and not fix and st == (m1,)
    m2 = Mismatch("provider", "anthropic", "openrouter")
    ev, fix, st = drift_step(st, (m2, m1), "alert")
    assert len(ev) == 1 and ev[0].kind == "drift_detected" and not ev[0].alert
    assert ev[0].fields["update"]
    ev, fix, st = drift_step(st, (), "alert")
    assert [e.kind for e in ev] == ["drift_cleared"] and st == ()
    ev, fix, st = drift_step(st, (), "alert")
    assert ev == []


def test_correct_mode_asks_once_per_drift() -> None:
    m1 = Mismatch("model", "a", "b")
    ev, fix, st = drift_step((), (m1,), "correct")
    assert fix and "restart" in ev[0].message
    ev, fix, st = drift_step(st, (m1,), "correct")
    assert not fix and ev == []


def test_unknown_does_not_clear_a_drift() -> None:
    """After a correction the new process has not beaten yet: the heartbeat is
    unknown, which must neither clear the incident nor reopen it (no restart loop)."""
    spec = agent(drift="correct")
    wrong = hb(model="claude-opus-4")
    now = detect(spec, ANTHROPIC, wrong, "node", None)
    seen = observed(spec, ANTHROPIC, wrong, "node", None)
    ev, fix, st = drift_step((), now, "correct", seen=seen)
    assert fix and len(st) == 1
    corrections = 1
    # Restarted: no heartbeat yet, then the same wrong model again.
    for beat in (None, None, wrong, None, wrong):
        now = detect(spec, ANTHROPIC, beat, "node", None)
        seen = observed(spec, ANTHROPIC, beat, "node", None)
        ev, fix, st = drift_step(st, now, "correct", seen=seen)
        assert ev == [] and len(st) == 1
        corrections += fix
    assert corrections == 1
    right = hb(model="claude-sonnet-4-5")
    now = detect(spec, ANTHROPIC, right, "node", None)
    seen = observed(spec, ANTHROPIC, right, "node", None)
    ev, fix, st = drift_step(st, now, "correct", seen=seen)
    assert [e.kind for e in ev] == ["drift_cleared"] and st == () and not fix


def test_mode_off_is_silent() -> None:
    assert drift_step((Mismatch("model", "a", "b"),), (Mismatch("model", "a", "c"),), "off") == (
        [],
        False,
        (),
    )
