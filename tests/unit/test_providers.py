"""Provider breakers, failover/failback choice, reports and secrets, with plain numbers for time."""

from __future__ import annotations

import pytest

from fleetd.config import ProviderSpec
from fleetd.errors import ConfigError, ProviderError, UnknownProvider
from fleetd.providers import (
    Breaker,
    Health,
    ProviderEvent,
    all_down_step,
    choose,
    classify_report,
    compile_patterns,
    current_hold_down,
    failback_ready_at,
    new_breaker,
    next_wake,
    on_probe,
    on_report,
    on_tick,
    provider_env,
    redact,
    require_provider,
    secret_values,
    set_manual,
    stranded,
    usable_for_failback,
)


def spec(name: str = "a", **kw: object) -> ProviderSpec:
    base: dict[str, object] = {
        "name": name,
        "probe_url": "http://127.0.0.1:9/health",
        "failure_threshold": 3,
        "failure_window": 60,
        "cooldown": 30,
        "success_threshold": 2,
        "hold_down": 60,
        "hold_down_max": 600,
        "failback_max_wait": 300,
    }
    base.update(kw)
    return ProviderSpec.model_validate(base)


def fail_n(b: Breaker, s: ProviderSpec, times: list[float]) -> tuple[Breaker, list[ProviderEvent]]:
    events: list[ProviderEvent] = []
    for t in times:
        b, ev = on_probe(b, s, False, t, "status 503")
        events += ev
    return b, events


def down(name: str, s: ProviderSpec, at: float = 0.0) -> Breaker:
    b, _ = fail_n(new_breaker(name, at), s, [at + 1, at + 2, at + 3])
    assert b.state is Health.DOWN
    return b


# --- breaker ----------------------------------------------------------------------


def test_threshold_failures_within_window_trip_once() -> None:
    s = spec()
    b = new_breaker("a", 0)
    b, ev = fail_n(b, s, [10, 20])
    assert b.state is Health.HEALTHY and ev == [] and b.failures == (10, 20)
    b, ev = on_report(b, s, 30, "status=rate_limited")
    assert b.state is Health.DOWN
    assert [e.kind for e in ev] == ["provider_down"] and ev[0].alert
    assert b.down_since == 30 and b.healthy_since is None and b.outages == 1
    assert "agent report" in ev[0].message
    # More failures while DOWN change nothing and do not extend the cooldown.
    b2, ev = fail_n(b, s, [31, 32, 33])
    assert ev == [] and b2 == b


def test_failures_outside_window_expire() -> None:
    s = spec(failure_window=10)
    b, ev = fail_n(new_breaker("a", 0), s, [0, 5, 11, 20, 29])
    # At no point were 3 failures within 10 s.
    assert b.state is Health.HEALTHY and ev == []
    assert b.failures == (20, 29)
    b, ev = on_probe(b, s, False, 29.5)
    assert b.state is Health.DOWN


def test_successes_do_not_reset_failure_count_while_healthy() -> None:
    s = spec()
    b, _ = fail_n(new_breaker("a", 0), s, [1, 2])
    b, _ = on_probe(b, s, True, 3)
    b, _ = on_probe(b, s, False, 4)
    assert b.state is Health.DOWN


def test_cooldown_then_probing_then_healthy() -> None:
    s = spec()
    b = down("a", s)  # down at 3, cooldown 30
    assert next_wake(b, s) == 33
    b, ev = on_tick(b, s, 32.9)
    assert b.state is Health.DOWN and ev == []
    # Probe successes during the cooldown do not shorten it.
    b, ev = on_probe(b, s, True, 20)
    assert b.state is Health.DOWN and ev == []
    b, ev = on_tick(b, s, 33)
    assert b.state is Health.PROBING and [e.kind for e in ev] == ["provider_probing"]
    b, ev = on_probe(b, s, True, 35)
    assert b.state is Health.PROBING and b.successes == 1 and ev == []
    b, ev = on_probe(b, s, True, 40)
    assert b.state is Health.HEALTHY
    assert [e.kind for e in ev] == ["provider_up"] and not ev[0].alert
    assert ev[0].fields["outage_seconds"] == 37
    assert b.healthy_since == 40 and b.down_since is None and b.outages == 1


def test_probe_after_cooldown_moves_to_probing_first() -> None:
    s = spec(success_threshold=1)
    b = down("a", s)
    b, ev = on_probe(b, s, True, 50)  # no tick happened: the probe applies it
    assert [e.kind for e in ev] == ["provider_probing", "provider_up"]
    assert b.state is Health.HEALTHY


def test_failure_while_probing_goes_down_with_longer_cooldown() -> None:
    s = spec(hold_down_max=100)
    b = down("a", s)
    b, _ = on_tick(b, s, 33)
    b, _ = on_probe(b, s, True, 34)
    b, ev = on_probe(b, s, False, 35)
    assert b.state is Health.DOWN and b.cooldown == 60 and b.successes == 0
    assert [e.kind for e in ev] == ["provider_down"] and not ev[0].alert
    assert b.outages == 1  # same outage
    b, _ = on_tick(b, s, 95)
    assert b.state is Health.PROBING
    b, _ = on_report(b, s, 96)
    assert b.cooldown == 100  # 120 capped at max(cooldown, hold_down_max)
    b, _ = on_tick(b, s, 196)
    b, _ = on_probe(b, s, True, 197)
    b, _ = on_probe(b, s, True, 198)
    assert b.state is Health.HEALTHY and b.cooldown == 0 and b.relapses == 0


def test_provider_without_probe_recovers_after_quiet_probing() -> None:
    s = spec(probe_url=None)
    b, _ = fail_n(new_breaker("a", 0), s, [1, 2, 3])
    b, ev = on_tick(b, s, 33)
    assert b.state is Health.PROBING and "no probe configured" in ev[0].message
    assert next_wake(b, s) == 63
    b, ev = on_tick(b, s, 63)
    assert b.state is Health.HEALTHY and ev[0].kind == "provider_up"


def test_manual_down_holds_regardless_of_probes_until_up() -> None:
    s = spec(success_threshold=1)
    b = new_breaker("a", 0)
    b, ev = set_manual(b, s, True, 10, who="uid 1000")
    assert b.state is Health.DOWN and b.manual and ev[0].alert and ev[0].fields["by"] == "uid 1000"
    for t in range(11, 500, 7):
        b, ev = on_probe(b, s, True, t)
        assert ev == []
        b, ev = on_tick(b, s, t + 1)
        assert ev == []
    assert b.state is Health.DOWN and next_wake(b, s) is None
    assert b.outages == 0  # a manual outage is not a failure of the provider
    b2, ev = set_manual(b, s, True, 600)
    assert b2 == b and ev == []
    b, ev = set_manual(b, s, False, 600)
    assert b.state is Health.HEALTHY and not b.manual and ev[0].kind == "provider_up"
    assert b.healthy_since == 600
    b2, ev = set_manual(b, s, False, 601)
    assert b2 == b and ev == []


def test_manual_up_overrides_automatic_outage_and_manual_down_on_down() -> None:
    s = spec()
    b = down("a", s)
    b, ev = set_manual(b, s, True, 5)
    assert b.manual and not ev[0].alert  # the outage was already open
    b, _ = on_tick(b, s, 1000)
    assert b.state is Health.DOWN
    b, ev = set_manual(b, s, False, 1001)
    assert b.state is Health.HEALTHY and ev[0].kind == "provider_up"


def test_illegal_move_is_refused() -> None:
    from fleetd.providers import _move

    with pytest.raises(ProviderError):
        _move(new_breaker("a", 0), Health.PROBING, 1)


# --- hold-down and flapping ---------------------------------------------------------


def test_hold_down_grows_with_recent_outages_and_caps() -> None:
    s = spec(hold_down=60, hold_down_max=600)
    b = new_breaker("a", 0)
    assert current_hold_down(b, s, 0) == 60
    b = Breaker("a", outage_starts=(100.0, 200.0, 300.0))
    assert current_hold_down(b, s, 310) == 240
    b = Breaker("a", outage_starts=tuple(float(t) for t in range(100, 200, 10)))
    assert current_hold_down(b, s, 250) == 600
    # Outages older than hold_down_max are forgotten.
    assert current_hold_down(b, s, 100 + 600 + 95) == 60


def test_usable_for_failback_needs_full_hold_down() -> None:
    s = spec(hold_down=60)
    b = new_breaker("a", 100)
    assert not usable_for_failback(b, s, 159)
    assert usable_for_failback(b, s, 160)
    assert failback_ready_at(b, s, 120) == 160
    d = down("a", s)
    assert not usable_for_failback(d, s, 10_000) and failback_ready_at(d, s, 1) is None


# --- choose -------------------------------------------------------------------------


SPECS = {n: spec(n) for n in ("a", "b", "c")}
CHAIN = ("a", "b", "c")


def boards(**states: Breaker) -> dict[str, Breaker]:
    out = {n: new_breaker(n, 0) for n in CHAIN}
    out.update(states)
    return out


def test_start_on_first_healthy() -> None:
    c = choose(CHAIN, None, boards(a=down("a", SPECS["a"])), SPECS, 10, None, None)
    assert (c.kind, c.to) == ("start", "b")


def test_failover_to_next_healthy_after_current() -> None:
    bd = boards(a=down("a", SPECS["a"]), b=down("b", SPECS["b"]))
    c = choose(CHAIN, "a", bd, SPECS, 10, False, None)
    assert (c.kind, c.to) == ("failover", "c")
    assert "a is DOWN" in c.reason
    # Failover does not wait for idle.
    assert choose(CHAIN, "a", bd, SPECS, 10, None, None).kind == "failover"


def test_failover_wraps_to_earlier_healthy_provider() -> None:
    bd = boards(b=new_breaker("b", 5), c=down("c", SPECS["c"]))
    # a is healthy but not yet trusted (healthy_since=0, hold-down 60, now=10)
    bd["a"] = new_breaker("a", 0)
    c = choose(CHAIN, "c", bd, SPECS, 10, False, None)
    assert (c.kind, c.to) == ("failover", "a")


def test_failover_prefers_trusted_earlier_provider() -> None:
    bd = boards(b=down("b", SPECS["b"], at=500))
    # a healthy since 0: trusted at 600. Agent on b which just went down.
    c = choose(CHAIN, "b", bd, SPECS, 600, False, None)
    assert (c.kind, c.to) == ("failover", "a")


def test_current_not_in_chain_fails_over() -> None:
    c = choose(CHAIN, "zz", boards(), SPECS, 10, False, None)
    assert (c.kind, c.to) == ("failover", "a")


def test_all_down_stays_put() -> None:
    bd = {n: down(n, SPECS[n]) for n in CHAIN}
    c = choose(CHAIN, "b", bd, SPECS, 10, True, None)
    assert c.kind == "all_down" and c.to is None
    assert choose(CHAIN, None, bd, SPECS, 10, True, None).kind == "all_down"
    assert choose((), None, bd, SPECS, 10, True, None).kind == "stay"


def test_no_failback_before_hold_down() -> None:
    s = SPECS["a"]
    a = down("a", s)
    a, _ = on_tick(a, s, 33)
    a, _ = on_probe(a, s, True, 34)
    a, _ = on_probe(a, s, True, 35)  # healthy since 35, hold-down 60
    bd = boards(a=a)
    assert choose(CHAIN, "b", bd, SPECS, 94, True, None).kind == "stay"
    c = choose(CHAIN, "b", bd, SPECS, 95, True, None)
    assert (c.kind, c.to) == ("failback", "a")


def test_failback_deferred_until_idle() -> None:
    bd = boards()  # all healthy since 0, trusted from 60
    c = choose(CHAIN, "c", bd, SPECS, 100, False, None)
    assert (c.kind, c.to, c.waiting_since) == ("wait_for_idle", "a", 100)
    c = choose(CHAIN, "c", bd, SPECS, 150, None, c.waiting_since)
    assert (c.kind, c.waiting_since) == ("wait_for_idle", 100)
    c = choose(CHAIN, "c", bd, SPECS, 160, True, c.waiting_since)
    assert (c.kind, c.to, c.waiting_since) == ("failback", "a", None)


def test_failback_at_max_wait_even_if_busy() -> None:
    bd = boards()
    c = choose(CHAIN, "b", bd, SPECS, 100, False, None)
    assert c.kind == "wait_for_idle"
    c2 = choose(CHAIN, "b", bd, SPECS, 399, False, c.waiting_since)
    assert c2.kind == "wait_for_idle"
    c3 = choose(CHAIN, "b", bd, SPECS, 400, False, c2.waiting_since)
    assert (c3.kind, c3.to) == ("failback", "a")
    assert "waited 300s" in c3.reason


def test_pending_failback_resets_when_target_fails_again() -> None:
    bd = boards()
    c = choose(CHAIN, "b", bd, SPECS, 100, False, None)
    bd["a"] = down("a", SPECS["a"], at=101)
    c = choose(CHAIN, "b", bd, SPECS, 110, False, c.waiting_since)
    assert (c.kind, c.waiting_since) == ("stay", None)


def test_flapping_provider_bounded_switches_and_growing_hold_down() -> None:
    """a flaps (up 5 s, down 5 s) for 60 s, then stays up. The agent on chain (a, b)
    moves off a once and back once: no flip-flop, and the hold-down has grown."""
    sa = spec(
        "a",
        failure_threshold=2,
        failure_window=10,
        cooldown=3,
        success_threshold=2,
        hold_down=10,
        hold_down_max=120,
        failback_max_wait=1000,
    )
    specs = {"a": sa, "b": spec("b")}
    bd = {"a": new_breaker("a", 0), "b": new_breaker("b", 0)}
    current: str | None = None
    waiting: float | None = None
    switches: list[tuple[float, str, str]] = []
    downs = 0
    max_hold = 0.0
    for step in range(0, 400):  # one probe per second, 400 s simulated
        t = float(step)
        up = t >= 60 or int(t // 5) % 2 == 0
        bd["a"], ev = on_probe(bd["a"], sa, up, t)
        bd["a"], ev2 = on_tick(bd["a"], sa, t + 0.5)
        downs += sum(1 for e in ev + ev2 if e.kind == "provider_down" and e.alert)
        max_hold = max(max_hold, current_hold_down(bd["a"], sa, t))
        c = choose(("a", "b"), current, bd, specs, t + 0.5, True, waiting)
        waiting = c.waiting_since
        if c.kind in ("start", "failover", "failback"):
            assert c.to is not None
            switches.append((t, c.kind, c.to))
            current = c.to
    kinds = [k for _, k, _ in switches]
    assert kinds == ["start", "failover", "failback"], switches
    assert downs >= 2  # it did flap (relapses while probing lengthen the cooldown instead)
    assert max_hold > sa.hold_down  # hold-down grew with the outages
    assert switches[2][0] >= 60 + 10  # no failback while flapping
    assert current == "a"


# --- fleet-wide "all down" --------------------------------------------------------


def test_stranded_agents_are_one_incident() -> None:
    chains = {"x": ("a", "b"), "y": ("b",), "z": ("c",), "w": ()}
    bd = boards()
    assert stranded(chains, bd) is None
    bd["b"] = down("b", SPECS["b"])
    s1 = stranded(chains, bd)
    assert s1 is not None and s1.agents == ("y",) and s1.providers == ("b",)
    ev = all_down_step(None, s1)
    assert [e.kind for e in ev] == ["providers_all_down"] and ev[0].alert
    assert all_down_step(s1, s1) == []
    bd["a"] = down("a", SPECS["a"])
    s2 = stranded(chains, bd)
    assert s2 is not None and s2.agents == ("x", "y") and s2.providers == ("a", "b")
    ev = all_down_step(s1, s2)
    assert len(ev) == 1 and not ev[0].alert and ev[0].fields["update"]
    ev = all_down_step(s2, None)
    assert [e.kind for e in ev] == ["providers_all_down_cleared"]


# --- agents' reports ----------------------------------------------------------------


def test_classify_report_status_and_patterns() -> None:
    s = spec(error_patterns=(r"(?i)overloaded_error", r"\b529\b", r"^Error: rate limit"))
    assert classify_report("rate_limited", None, s)
    assert classify_report("provider_error", "", s)
    assert not classify_report("working", None, s)
    assert not classify_report(None, "all fine\n", s)
    assert classify_report("working", "x\nAPI Error: Overloaded_Error\n", s)
    assert classify_report(None, "status 529 from upstream", s)
    assert classify_report(None, "ok\nError: rate limit exceeded\n", s)
    assert not classify_report(None, "status 5290", s)
    # Only the tail is searched: an error far back in the scrollback is old news.
    assert not classify_report(None, "overloaded_error\n" + "." * 20000, s)
    assert not classify_report("working", "overloaded_error", spec())


def test_bad_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        compile_patterns(("ok", "(unclosed"))
    assert compile_patterns(("a",)) is compile_patterns(("a",))


# --- environment and secrets ------------------------------------------------------


def test_provider_env_and_secrets_never_in_events() -> None:
    secret = "sk-ant-THIS-IS-SECRET-123"
    s = spec(
        "anthropic",
        env={"ANTHROPIC_BASE_URL": "https://api.anthropic.com"},
        model="claude-sonnet-4-5",
        secret_env=("ANTHROPIC_API_KEY",),
    )
    env = provider_env(s, {"ANTHROPIC_API_KEY": secret}.get)
    assert env == {
        "ANTHROPIC_BASE_URL": "https://api.anthropic.com",
        "ANTHROPIC_API_KEY": secret,
        "FLEETD_PROVIDER": "anthropic",
        "FLEETD_MODEL": "claude-sonnet-4-5",
    }
    assert secret_values(s, env) == (secret,)
    # Drive the breaker through a whole outage: no event mentions the secret.
    b = new_breaker("anthropic", 0)
    events: list[ProviderEvent] = []
    for t in range(1, 6):
        b, ev = on_report(b, s, t, "status=rate_limited")
        events += ev
    b, ev = set_manual(b, s, True, 10)
    events += ev
    b, ev = set_manual(b, s, False, 11)
    events += ev
    assert events and all(secret not in repr(e) for e in events)
    text = f"curl -H 'x-api-key: {secret}' failed; key={secret}"
    assert redact(text, [secret, "", "sk-ant"]) == "curl -H 'x-api-key: ***' failed; key=***"


def test_missing_secret_names_only_the_variable() -> None:
    s = spec("openai", secret_env=("OPENAI_API_KEY",))
    nothing: dict[str, str] = {"OPENAI_API_KEY": ""}
    with pytest.raises(ProviderError) as info:
        provider_env(s, nothing.get)
    assert "OPENAI_API_KEY" in info.value.message
    assert info.value.details == {"provider": "openai", "variable": "OPENAI_API_KEY"}
    env = provider_env(spec("plain"), nothing.get)
    assert env == {"FLEETD_PROVIDER": "plain"}


def test_require_provider() -> None:
    assert require_provider(SPECS, "a") is SPECS["a"]
    with pytest.raises(UnknownProvider):
        require_provider(SPECS, "nope")
