"""Provider health (circuit breakers), failover/failback choice, provider environment.

Everything here is pure: no I/O, no clock, no randomness. Time is a float of
monotonic seconds passed by the caller, so every rule below is a unit test with
plain numbers. The shell (the supervision loop) owns one :class:`Breaker` per
provider, shared by all agents on it, feeds it probe results (``on_probe``),
agents' failure reports (``on_report``), ticks (``on_tick``) and operator
commands (``set_manual``), stores the returned :class:`ProviderEvent` s, and asks
:func:`choose` per agent where it should run.

Breaker rules (one table, see ``_TRANSITIONS``):

* HEALTHY -> DOWN when ``failure_threshold`` failures (failed probes and agents'
  reports alike) fall within ``failure_window`` seconds. Successes do not erase
  failures; failures simply age out of the window.
* DOWN -> PROBING when the current cooldown has passed (``on_tick``). The first
  cooldown of an outage is ``spec.cooldown``; every failure while PROBING sends
  the breaker back to DOWN with the cooldown doubled, capped at
  ``max(cooldown, hold_down_max)``.
* PROBING -> HEALTHY after ``success_threshold`` consecutive successful probes.
  A provider without ``probe_url`` gets no probes, so it becomes HEALTHY after a
  quiet PROBING period of one ``cooldown`` with no failure report.
* Operator override: ``set_manual(down=True)`` forces DOWN and nothing but
  ``set_manual(down=False)`` lifts it; ``down=False`` makes the provider HEALTHY
  at once (the operator vouches for it) but failback still waits the hold-down.
* One outage = HEALTHY -> ... -> HEALTHY. ``provider_down`` opens it with
  ``alert=True``; relapses while it is open are ``provider_down`` with
  ``alert=False``; ``provider_up`` closes it (the recovery notice).

Flapping: the hold-down (how long a provider must have been HEALTHY before
agents fail back to it) is ``hold_down * 2**(n - 1)`` capped at
``hold_down_max``, where ``n`` is the number of automatic outages that *started*
within the last ``hold_down_max`` seconds (at least 1). An outage older than the
longest possible hold-down no longer counts against the provider.

Failover rules (:func:`choose`): an agent moves only because its provider is not
HEALTHY (failover, immediately) or because an earlier provider in its chain has
been HEALTHY for its full hold-down (failback, preferably when idle). Both
conditions are stable over time, so an agent never flip-flops: a provider that
flaps faster than its hold-down is never failed back to.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from fleetd.config import ProviderSpec
from fleetd.errors import ConfigError, ProviderError, UnknownProvider

# Only the tail of the pane is matched: errors of interest are recent, and a bounded
# input keeps a badly written pattern from stalling the supervision loop.
PANE_TAIL_CHARS = 8192
REDACTED = "***"


class Health(StrEnum):
    HEALTHY = "HEALTHY"
    DOWN = "DOWN"
    PROBING = "PROBING"


H = Health

# Everything that moves a breaker is listed here; _move() refuses anything else.
_TRANSITIONS: dict[Health, frozenset[Health]] = {
    H.HEALTHY: frozenset({H.DOWN}),
    H.DOWN: frozenset({H.PROBING, H.HEALTHY}),  # HEALTHY only by operator override
    H.PROBING: frozenset({H.DOWN, H.HEALTHY}),
}

EventKind = Literal[
    "provider_down",
    "provider_probing",
    "provider_up",
    "providers_all_down",
    "providers_all_down_cleared",
]


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """Something to record. Never carries a secret: only names, counts and times."""

    kind: EventKind
    provider: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    alert: bool = False  # True only for the event that opens an incident


@dataclass(frozen=True, slots=True)
class Breaker:
    """Health of one provider. Replaced, never mutated.

    ``failures`` holds the times of failures still inside ``failure_window``
    (only kept while HEALTHY); ``outage_starts`` the start times of recent
    automatic outages (for the flapping hold-down); ``outages`` counts all
    automatic outages since fleetd started.
    """

    provider: str
    state: Health = H.HEALTHY
    since: float = 0.0  # when the current state was entered
    healthy_since: float | None = 0.0  # None unless HEALTHY
    down_since: float | None = None  # start of the open outage (DOWN or PROBING)
    failures: tuple[float, ...] = ()
    successes: int = 0  # consecutive successful probes while PROBING
    cooldown: float = 0.0  # length of the current DOWN period
    relapses: int = 0  # failures while PROBING in the open outage
    outages: int = 0
    outage_starts: tuple[float, ...] = ()
    manual: bool = False  # forced DOWN by an operator
    reason: str = ""


def new_breaker(name: str, now: float) -> Breaker:
    """A provider is presumed HEALTHY when fleetd starts (since ``now``)."""
    return Breaker(provider=name, since=now, healthy_since=now)


def _move(b: Breaker, dst: Health, now: float, **changes: Any) -> Breaker:
    if dst not in _TRANSITIONS[b.state]:
        raise ProviderError(f"breaker {b.provider}: illegal move {b.state} -> {dst}")
    return replace(b, state=dst, since=now, **changes)


def _fields(b: Breaker, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"state": str(b.state), "outages": b.outages}
    if b.manual:
        out["manual"] = True
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def _max_cooldown(spec: ProviderSpec) -> float:
    return max(spec.cooldown, spec.hold_down_max)


def current_hold_down(b: Breaker, spec: ProviderSpec, now: float) -> float:
    """Seconds of continuous health required before agents fail back to ``b``."""
    recent = sum(1 for t in b.outage_starts if now - t < spec.hold_down_max)
    return float(min(spec.hold_down_max, spec.hold_down * 2 ** (max(recent, 1) - 1)))


def _trip(
    b: Breaker, spec: ProviderSpec, now: float, why: str
) -> tuple[Breaker, list[ProviderEvent]]:
    """HEALTHY -> DOWN: a new outage opens."""
    starts = (*(t for t in b.outage_starts if now - t < spec.hold_down_max), now)
    nb = _move(
        b,
        H.DOWN,
        now,
        healthy_since=None,
        down_since=now,
        failures=(),
        successes=0,
        cooldown=spec.cooldown,
        relapses=0,
        outages=b.outages + 1,
        outage_starts=starts,
        reason=why,
    )
    msg = (
        f"provider {b.provider} is down ({why}); agents on it fail over; "
        f"probing again in {spec.cooldown:g}s"
    )
    return nb, [ProviderEvent("provider_down", b.provider, msg, _fields(nb, cause=why), alert=True)]


def _relapse(
    b: Breaker, spec: ProviderSpec, now: float, why: str
) -> tuple[Breaker, list[ProviderEvent]]:
    """PROBING -> DOWN: the open outage continues with a longer cooldown."""
    cooldown = min(_max_cooldown(spec), spec.cooldown * 2 ** (b.relapses + 1))
    nb = _move(b, H.DOWN, now, successes=0, cooldown=cooldown, relapses=b.relapses + 1, reason=why)
    msg = f"provider {b.provider} failed while probing ({why}); next probe in {cooldown:g}s"
    return nb, [
        ProviderEvent("provider_down", b.provider, msg, _fields(nb, cause=why, cooldown=cooldown))
    ]


def _recover(b: Breaker, now: float, why: str) -> tuple[Breaker, list[ProviderEvent]]:
    outage = now - b.down_since if b.down_since is not None else None
    nb = _move(
        b,
        H.HEALTHY,
        now,
        healthy_since=now,
        down_since=None,
        failures=(),
        successes=0,
        cooldown=0.0,
        relapses=0,
        manual=False,
        reason=why,
    )
    dur = f" after {outage:.0f}s" if outage is not None else ""
    msg = f"provider {b.provider} is healthy again{dur} ({why})"
    fields = _fields(nb, cause=why, outage_seconds=None if outage is None else round(outage, 3))
    return nb, [ProviderEvent("provider_up", b.provider, msg, fields)]


def _failure(
    b: Breaker, spec: ProviderSpec, now: float, why: str
) -> tuple[Breaker, list[ProviderEvent]]:
    if b.manual or b.state is H.DOWN:
        # Already down: more failures change nothing (the cooldown is not extended,
        # or a dead provider could never be probed again).
        return b, []
    if b.state is H.PROBING:
        return _relapse(b, spec, now, why)
    failures = (*(t for t in b.failures if now - t < spec.failure_window), now)
    if len(failures) >= spec.failure_threshold:
        return _trip(
            b, spec, now, f"{len(failures)} failures within {spec.failure_window:g}s, last: {why}"
        )
    return replace(b, failures=failures), []


def on_probe(
    b: Breaker, spec: ProviderSpec, ok: bool, now: float, detail: str = ""
) -> tuple[Breaker, list[ProviderEvent]]:
    """Feed one active probe result. ``detail`` (e.g. ``ProbeResult.error``) goes into reasons."""
    b, events = on_tick(b, spec, now)
    if not ok:
        nb, more = _failure(b, spec, now, f"probe failed: {detail}" if detail else "probe failed")
        return nb, events + more
    if b.state is H.PROBING and not b.manual:
        successes = b.successes + 1
        if successes >= spec.success_threshold:
            nb, more = _recover(b, now, f"{successes} successful probes")
            return nb, events + more
        return replace(b, successes=successes), events
    return b, events


def on_report(
    b: Breaker, spec: ProviderSpec, now: float, detail: str = ""
) -> tuple[Breaker, list[ProviderEvent]]:
    """An agent reported a provider failure (see :func:`classify_report`)."""
    b, events = on_tick(b, spec, now)
    nb, more = _failure(b, spec, now, f"agent report: {detail}" if detail else "agent report")
    return nb, events + more


def on_tick(b: Breaker, spec: ProviderSpec, now: float) -> tuple[Breaker, list[ProviderEvent]]:
    """Time passed: end a cooldown, or the quiet PROBING period of an unprobed provider."""
    if b.manual:
        return b, []
    if b.state is H.DOWN and now >= b.since + b.cooldown:
        nb = _move(b, H.PROBING, now, successes=0)
        how = (
            f"needs {spec.success_threshold} successful probe(s)"
            if spec.probe_url
            else f"no probe configured; healthy after {spec.cooldown:g}s without failure reports"
        )
        msg = f"provider {b.provider} cooldown over, probing ({how})"
        return nb, [ProviderEvent("provider_probing", b.provider, msg, _fields(nb))]
    if b.state is H.PROBING and spec.probe_url is None and now >= b.since + spec.cooldown:
        return _recover(b, now, "quiet probing period without failure reports")
    return b, []


def set_manual(
    b: Breaker, spec: ProviderSpec, down: bool, now: float, who: str = "operator"
) -> tuple[Breaker, list[ProviderEvent]]:
    """Operator override. ``down=True`` holds it DOWN until ``down=False``."""
    if down:
        if b.manual:
            return b, []
        msg = f"provider {b.provider} marked down by {who}; agents on it fail over"
        if b.state is H.DOWN:
            nb = replace(b, manual=True, reason=f"manual ({who})")
            return nb, [
                ProviderEvent("provider_down", b.provider, msg, _fields(nb, cause="manual"))
            ]
        # A manual outage does not count towards flapping: the provider did not fail.
        nb = _move(
            b,
            H.DOWN,
            now,
            healthy_since=None,
            down_since=b.down_since if b.down_since is not None else now,
            failures=(),
            successes=0,
            manual=True,
            reason=f"manual ({who})",
        )
        fields = _fields(nb, cause="manual", by=who)
        return nb, [
            ProviderEvent("provider_down", b.provider, msg, fields, alert=b.state is H.HEALTHY)
        ]
    if b.state is H.HEALTHY:
        return b, []
    return _recover(b, now, f"marked up by {who}")


def next_wake(b: Breaker, spec: ProviderSpec) -> float | None:
    """Earliest monotonic time at which ``on_tick`` could change ``b``; None if never."""
    if b.manual:
        return None
    if b.state is H.DOWN:
        return b.since + b.cooldown
    if b.state is H.PROBING and spec.probe_url is None:
        return b.since + spec.cooldown
    return None


def usable_for_failback(b: Breaker, spec: ProviderSpec, now: float) -> bool:
    """HEALTHY, not overridden, and healthy for at least the current hold-down."""
    return (
        b.state is H.HEALTHY
        and not b.manual
        and b.healthy_since is not None
        and now - b.healthy_since >= current_hold_down(b, spec, now)
    )


def failback_ready_at(b: Breaker, spec: ProviderSpec, now: float) -> float | None:
    """When ``b`` would become usable for failback if it stays HEALTHY (for timers).

    Exact unless an old outage ages out first (which only makes it earlier).
    """
    if b.state is not H.HEALTHY or b.manual or b.healthy_since is None:
        return None
    return max(now, b.healthy_since + current_hold_down(b, spec, now))


# --- failover / failback choice ---------------------------------------------------

ChoiceKind = Literal["stay", "start", "failover", "failback", "all_down", "wait_for_idle"]


@dataclass(frozen=True, slots=True)
class Choice:
    """Where an agent should run.

    * ``stay``: keep running where it is.
    * ``start``: the agent has no provider yet (first spawn); start it on ``to``.
    * ``failover``: its provider is not HEALTHY; restart it on ``to`` now.
    * ``failback``: an earlier provider is trustworthy again; restart it on ``to``.
    * ``all_down``: no provider of its chain is HEALTHY; leave the agent as it is.
    * ``wait_for_idle``: a failback to ``to`` is possible but the agent is busy.

    ``waiting_since`` is what the caller must store and pass back next time: the
    time failback first became possible, or None when no failback is pending.
    """

    kind: ChoiceKind
    to: str | None = None
    reason: str = ""
    waiting_since: float | None = None


def _healthy(boards: Mapping[str, Breaker], name: str) -> bool:
    b = boards.get(name)
    return b is not None and b.state is H.HEALTHY and not b.manual


def choose(
    chain: Sequence[str],
    current: str | None,
    boards: Mapping[str, Breaker],
    specs: Mapping[str, ProviderSpec],
    now: float,
    idle: bool | None,
    waiting_since: float | None,
) -> Choice:
    """Decide one agent's provider. Pure; call it whenever a breaker or the agent changes.

    Rules, in order:

    1. Empty chain: ``stay`` (the agent does not use providers).
    2. ``current`` is None (not started yet): ``start`` on the first HEALTHY provider;
       ``all_down`` if there is none.
    3. ``current`` is not HEALTHY (or no longer in the chain): ``failover`` at once,
       regardless of idleness (the agent cannot work where it is). Target: the
       earliest provider *before* ``current`` that is already usable for failback
       (saves a second restart later), else the first HEALTHY provider *after*
       ``current``, else any HEALTHY provider before it (wrapping around: a
       working provider beats none). None HEALTHY: ``all_down`` — the agent stays
       put, so there is no restart loop, and comes back on its own provider.
    4. ``current`` is HEALTHY: failback to the earliest provider before it that is
       :func:`usable_for_failback`, when ``idle is True``, or when failback has been
       possible for the target's ``failback_max_wait`` seconds (``waiting_since``);
       otherwise ``wait_for_idle``. No such provider: ``stay``.
    """
    if not chain:
        return Choice("stay", reason="no provider chain")
    if current is None:
        for name in chain:
            if _healthy(boards, name):
                return Choice("start", name, f"first healthy provider in chain: {name}")
        return Choice("all_down", reason="no provider in the chain is healthy")

    idx = chain.index(current) if current in chain else None
    if idx is None or not _healthy(boards, current):
        why = (
            f"{current} is not in the chain"
            if idx is None
            else f"{current} is {boards[current].state if current in boards else 'unknown'}"
        )
        before = chain[:idx] if idx is not None else ()
        after = chain[idx + 1 :] if idx is not None else chain
        for name in before:
            b = boards.get(name)
            if b is not None and name in specs and usable_for_failback(b, specs[name], now):
                return Choice("failover", name, f"{why}; {name} is healthy and trusted")
        for name in (*after, *before):
            if _healthy(boards, name):
                return Choice("failover", name, f"{why}; next healthy provider: {name}")
        return Choice("all_down", reason=f"{why}; no provider in the chain is healthy")

    for name in chain[:idx]:
        b = boards.get(name)
        spec = specs.get(name)
        if b is None or spec is None or not usable_for_failback(b, spec, now):
            continue
        since = waiting_since if waiting_since is not None else now
        if idle is True:
            return Choice("failback", name, f"{name} healthy for its hold-down; agent idle")
        if now - since >= spec.failback_max_wait:
            return Choice(
                "failback",
                name,
                f"{name} healthy for its hold-down; waited {now - since:.0f}s for idle",
            )
        return Choice("wait_for_idle", name, f"failback to {name} waits for idle", since)
    return Choice("stay", reason=f"{current} is healthy")


# --- "all providers down": one incident for the fleet ---------------------------


@dataclass(frozen=True, slots=True)
class AllDown:
    """Agents whose whole chain is unusable, and the providers of those chains."""

    agents: tuple[str, ...]
    providers: tuple[str, ...]


def stranded(chains: Mapping[str, Sequence[str]], boards: Mapping[str, Breaker]) -> AllDown | None:
    """Which agents (name -> chain) have no HEALTHY provider; None if none."""
    agents = sorted(
        a for a, chain in chains.items() if chain and not any(_healthy(boards, p) for p in chain)
    )
    if not agents:
        return None
    providers = sorted({p for a in agents for p in chains[a]})
    return AllDown(tuple(agents), tuple(providers))


def all_down_step(prev: AllDown | None, now: AllDown | None) -> list[ProviderEvent]:
    """One incident for "all providers down": opened once, updated, cleared once."""
    if prev == now:
        return []
    if now is None:
        assert prev is not None
        msg = f"providers available again for {', '.join(prev.agents)}"
        return [
            ProviderEvent(
                "providers_all_down_cleared",
                ",".join(prev.providers),
                msg,
                {"agents": list(prev.agents)},
            )
        ]
    msg = (
        f"no healthy provider for agent(s) {', '.join(now.agents)} "
        f"(down: {', '.join(now.providers)}); they stay as they are until one recovers"
    )
    fields = {
        "agents": list(now.agents),
        "providers": list(now.providers),
        "update": prev is not None,
    }
    return [
        ProviderEvent(
            "providers_all_down", ",".join(now.providers), msg, fields, alert=prev is None
        )
    ]


# --- agents' own reports -----------------------------------------------------------


@functools.lru_cache(maxsize=256)
def compile_patterns(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    """Compile ``error_patterns`` once. Raises ConfigError naming the bad pattern.

    The roster validator should call this for every provider so a bad regex is
    refused at load; afterwards the cache makes :func:`classify_report` cheap.
    """
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p, re.MULTILINE))
        except re.error as exc:
            raise ConfigError(
                f"error_patterns: {p!r} is not a valid regular expression: {exc}"
            ) from None
    return tuple(out)


def classify_report(status: str | None, pane_text: str | None, spec: ProviderSpec) -> bool:
    """True if the agent says its provider fails: a heartbeat ``status`` listed in
    ``spec.error_statuses``, or an ``error_patterns`` match in the tail of the pane."""
    if status is not None and status in spec.error_statuses:
        return True
    if not pane_text or not spec.error_patterns:
        return False
    tail = pane_text[-PANE_TAIL_CHARS:]
    return any(p.search(tail) for p in compile_patterns(spec.error_patterns))


# --- environment and secrets -------------------------------------------------------


def provider_env(
    spec: ProviderSpec, environ_secret_lookup: Callable[[str], str | None]
) -> dict[str, str]:
    """Environment for an agent on ``spec``: its ``env``, its secrets, then fleetd's keys.

    Secrets are looked up by NAME in fleetd's own environment at spawn time
    (``environ_secret_lookup`` is ``os.environ.get`` in the shell). A missing or
    empty secret raises :class:`ProviderError` naming only the variable.
    The returned dict holds secret values: never log it, record it or put it in an
    event; pass it to the spawn only, and :func:`redact` anything captured later.
    """
    env = dict(spec.env)
    for name in spec.secret_env:
        value = environ_secret_lookup(name)
        if not value:
            raise ProviderError(
                f"provider {spec.name}: secret variable {name} is not set in fleetd's environment",
                provider=spec.name,
                variable=name,
            )
        env[name] = value
    env["FLEETD_PROVIDER"] = spec.name
    if spec.model:
        env["FLEETD_MODEL"] = spec.model
    return env


def secret_values(spec: ProviderSpec, env: Mapping[str, str]) -> tuple[str, ...]:
    """The secret values inside an environment built by :func:`provider_env`."""
    return tuple(env[n] for n in spec.secret_env if env.get(n))


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of every non-empty secret with ``***``.

    Longest first, so a secret that contains another is fully hidden.
    """
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(s, REDACTED)
    return text


def require_provider(specs: Mapping[str, ProviderSpec], name: str) -> ProviderSpec:
    """Look a provider up or raise ``provider.unknown``."""
    try:
        return specs[name]
    except KeyError:
        raise UnknownProvider(f"no provider named {name!r}", provider=name) from None
