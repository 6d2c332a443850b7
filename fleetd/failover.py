"""Provider failover/failback and drift, wired into the running daemon.

``fleetd.providers`` and ``fleetd.drift`` decide (pure, unit-tested); this module
is the shell around them. One :class:`ProviderManager` per daemon owns:

* one breaker per provider, shared by every agent on it, fed by the
  :class:`~fleetd.probe.Prober` (active probes), by agents' heartbeats
  (``status=provider_error`` / ``rate_limited``) and by ``error_patterns`` in the
  *new* output of their panes, and by operator overrides;
* per agent: the active provider (the one fleetd started it on), a pending
  failback's ``waiting_since``, an operator pin, and the open drift state;
* the one fleet-wide ``providers_all_down`` incident.

It plugs into each :class:`~fleetd.supervisor.HostSupervisor` through its hooks
(``provider_for``, ``provider_env``, ``observed``, ``redact``) and moves agents
only through ``HostSupervisor.command`` — ``restart`` for a failover/failback
(forensics are captured as for any restart), ``correct`` for a drift correction
(a restart that keeps the restart history, so backoff and the intensity limit
apply; see ``policy``).

Invariants:

* an agent is moved by at most one task at a time (``Slot.moving``); while it
  moves, its reports and drift are ignored (they describe the old process);
* a heartbeat counts (as a report, for idleness, for drift) only if it is fresh
  and written by the agent's current pid, so the old process's last words never
  trip the new provider or raise a false drift;
* provider key VALUES are never put in an event or a row returned here; captured
  scrollback goes through :meth:`ProviderManager.redact` before it is stored.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import TaskGroup, TaskStatus

from fleetd import drift, providers
from fleetd.config import ProviderSpec, Roster
from fleetd.errors import BadArguments, FleetError, ProviderError, UnknownAgent
from fleetd.events import EventBus
from fleetd.heartbeat import Heartbeat
from fleetd.model import State
from fleetd.probe import Prober, ProbeResult
from fleetd.providers import AllDown, Breaker, Health, ProviderEvent
from fleetd.store import Store
from fleetd.supervisor import AgentRuntime, HostSupervisor
from fleetd.tmux import Pane

log = structlog.get_logger("fleetd.failover")

# The decision loop also runs on every breaker change and report; this bound is
# only the backstop for deadlines (hold-down ends, max waits) between them.
MAX_SLEEP = 0.5
# Pane output is scanned for error_patterns at most this often.
SCAN_INTERVAL = 1.0

MOVABLE = frozenset({State.STARTING, State.RUNNING, State.HUNG})


@dataclass
class Slot:
    """What the manager knows about one agent (keyed by name; survives a reload)."""

    sup: HostSupervisor
    active: str | None = None  # provider fleetd started (or adopted) it on
    waiting_since: float | None = None  # failback possible since, waiting for idle
    pinned: str | None = None  # operator failover: stay here until failback / outage
    moving: bool = False
    last_report_ts: float | None = None  # heartbeat ts already counted as a report
    pane_lines: list[str] | None = None  # last scanned pane tail (baseline for "new")
    drift: tuple[drift.Mismatch, ...] = ()
    drift_incident: str | None = None
    failovers: int = 0
    failbacks: int = 0
    # A process's arguments never change: read them once per pid.
    cmdline_pid: int | None = None
    cmdline: list[str] | None = None


def new_lines(prev: list[str] | None, cur: list[str]) -> list[str]:
    """Lines of ``cur`` that were not in ``prev``'s tail (pane output since last look).

    The longest prefix of ``cur`` that equals a suffix of ``prev`` is old output
    that scrolled; the rest is new. No baseline (``prev`` None) means nothing is
    new: text already on screen when fleetd first looked is not a fresh report.
    """
    if prev is None:
        return []
    for m in range(min(len(prev), len(cur)), 0, -1):
        if cur[:m] == prev[-m:]:
            return cur[m:]
    return cur


class ProviderManager:
    def __init__(
        self,
        roster: Roster,
        store: Store,
        bus: EventBus,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        secret_lookup: Callable[[str], str | None] = os.environ.get,
    ) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self.wall = wall
        self.lookup = secret_lookup
        now = clock()
        self.specs: dict[str, ProviderSpec] = dict(roster.providers)
        self.boards: dict[str, Breaker] = {n: providers.new_breaker(n, now) for n in self.specs}
        self.incidents: dict[str, str] = {}  # provider -> open outage incident
        self.all_down: AllDown | None = None
        self.all_down_incident: str | None = None
        self.slots: dict[str, Slot] = {}
        self.supervisors: list[HostSupervisor] = []
        self._wake = anyio.Event()
        self._tg: TaskGroup | None = None
        self._prober_scope: anyio.CancelScope | None = None

    # --- wiring -------------------------------------------------------------------

    def attach(self, sup: HostSupervisor) -> None:
        """Install the hooks on a supervisor (before it runs)."""
        self.supervisors.append(sup)
        sup.provider_for = lambda rt: self.provider_for(sup, rt)
        sup.provider_env = self.provider_env
        sup.observed = lambda rt, pane: self.observed(sup, rt, pane)
        sup.redact = self.redact

    def reload(self, roster: Roster) -> None:
        """Take a new roster's providers; breakers of unchanged names keep their state."""
        now = self.clock()
        self.specs = dict(roster.providers)
        self.boards = {n: self.boards.get(n) or providers.new_breaker(n, now) for n in self.specs}
        if self._prober_scope is not None:
            self._prober_scope.cancel()  # _prober() starts a new Prober with the new specs
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def _slot(self, sup: HostSupervisor, rt: AgentRuntime) -> Slot:
        slot = self.slots.get(rt.name)
        if slot is None:
            slot = self.slots[rt.name] = Slot(sup)
        slot.sup = sup
        return slot

    def _runtimes(self) -> list[tuple[HostSupervisor, AgentRuntime]]:
        return [(sup, rt) for sup in self.supervisors for rt in list(sup.agents.values())]

    def _find(self, name: Any) -> tuple[HostSupervisor, AgentRuntime]:
        if not isinstance(name, str):
            raise BadArguments("'agent' must be a string")
        for sup, rt in self._runtimes():
            if rt.name == name:
                return sup, rt
        raise UnknownAgent(f"no agent named {name!r} in the roster", agent=name)

    # --- tasks ----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Probe, scan panes and decide until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._prober)
            tg.start_soon(self._scan_loop)
            task_status.started()
            while True:
                self.evaluate()
                with anyio.move_on_after(MAX_SLEEP):
                    await self._wake.wait()
                self._wake = anyio.Event()

    async def _prober(self) -> None:
        while True:
            self._prober_scope = anyio.CancelScope()
            with self._prober_scope:
                await Prober(list(self.specs.values()), self.on_probe, self.clock).run()
                await anyio.sleep_forever()  # no provider has a probe_url
            await anyio.lowlevel.checkpoint()

    async def _scan_loop(self) -> None:
        while True:
            await anyio.sleep(SCAN_INTERVAL)
            for sup, rt in self._runtimes():
                if not rt.spec.providers or not sup.is_local:
                    # Remote panes are not scanned: a capture per agent would break the
                    # one-round-trip-per-host budget; remote agents report by heartbeat.
                    continue
                try:
                    await self._scan(sup, rt)
                except FleetError as exc:
                    log.debug("provider.scan.failed", agent=rt.name, error=exc.message)

    async def _scan(self, sup: HostSupervisor, rt: AgentRuntime) -> None:
        """Look for ``error_patterns`` in output the pane printed since the last scan."""
        slot = self._slot(sup, rt)
        spec = self.specs.get(slot.active or "")
        pane = rt.pane
        if spec is None or not spec.error_patterns or pane is None or pane.dead:
            slot.pane_lines = None
            return
        if slot.moving or rt.agent.state is not State.RUNNING:
            return
        text = await sup.executor.capture(rt.spec, pane)
        lines = text.splitlines()
        fresh = new_lines(slot.pane_lines, lines)
        slot.pane_lines = lines
        text_new = "\n".join(fresh)
        if fresh and slot.active == spec.name and providers.classify_report(None, text_new, spec):
            self._report(spec.name, f"{rt.name}: error pattern in pane output")

    # --- breaker inputs -----------------------------------------------------------

    def on_probe(self, name: str, result: ProbeResult, now: float) -> None:
        spec, board = self.specs.get(name), self.boards.get(name)
        if spec is None or board is None:
            return  # removed by a reload while a probe was in flight
        self._apply(*providers.on_probe(board, spec, result.ok, now, result.error or ""))

    def _report(self, name: str, detail: str) -> None:
        spec, board = self.specs.get(name), self.boards.get(name)
        if spec is None or board is None:
            return
        self._apply(*providers.on_report(board, spec, self.clock(), detail))

    def set_manual(self, name: str, down: bool, who: str) -> dict[str, Any]:
        spec = providers.require_provider(self.specs, name)
        self._apply(*providers.set_manual(self.boards[name], spec, down, self.clock(), who))
        return self.provider_row(name)

    def _apply(self, board: Breaker, events: list[ProviderEvent]) -> None:
        changed = board != self.boards.get(board.provider)
        self.boards[board.provider] = board
        for ev in events:
            self._publish_provider(ev)
        if changed or events:
            self.wake()

    def _publish_provider(self, ev: ProviderEvent) -> None:
        incident = self.incidents.get(ev.provider)
        if ev.kind == "provider_down" and ev.alert and incident is None:
            incident = self.incidents[ev.provider] = f"provider-{ev.provider}-{_hex()}"
            self.store.open_incident(incident, "provider", ev.provider, ev.kind, self.wall())
        self.bus.publish(
            ev.kind,
            ev.message,
            state=str(ev.fields.get("state", "")) or None,
            incident=incident,
            alert=ev.alert,
            data={"provider": ev.provider, **ev.fields},
        )
        if ev.kind == "provider_up" and incident is not None:
            self.store.close_incident(incident, self.wall())
            del self.incidents[ev.provider]

    # --- supervisor hooks ---------------------------------------------------------

    def provider_for(self, sup: HostSupervisor, rt: AgentRuntime) -> ProviderSpec | None:
        """The provider to (re)start ``rt`` on, chosen at spawn time.

        A move in flight has already chosen. Otherwise a crash restart on a provider
        that went down meanwhile fails over right here (one restart, not two).
        """
        chain = rt.spec.providers
        if not chain:
            return None
        slot = self._slot(sup, rt)
        if not slot.moving:
            now = self.clock()
            if slot.active is None or slot.active not in chain:
                pick = providers.choose(chain, None, self.boards, self.specs, now, None, None)
                # All down: start on the primary anyway; it resumes when that recovers.
                slot.active = pick.to or chain[0]
            elif not self._healthy(slot.active):
                pick = providers.choose(
                    chain, slot.active, self.boards, self.specs, now, None, None
                )
                if pick.kind == "failover" and pick.to is not None:
                    self._record_move(
                        sup, rt, slot, "failover", pick.to, pick.reason + " (at spawn)"
                    )
        return self.specs.get(slot.active or "")

    def provider_env(self, rt: AgentRuntime, spec: ProviderSpec) -> dict[str, str]:
        # The tmux server inherits fleetd's environment, secrets included; a pane
        # gets every other provider's secret variable set empty so that an agent
        # holds only the key of the provider it runs on.
        env = {n: "" for p in self.specs.values() for n in p.secret_env}
        env.update(providers.provider_env(spec, self.lookup))
        return env

    def secrets(self) -> tuple[str, ...]:
        """Every provider secret value fleetd could hand out (for redaction)."""
        out = []
        for spec in self.specs.values():
            for name in spec.secret_env:
                value = self.lookup(name)
                if value:
                    out.append(value)
        return tuple(out)

    def redact(self, text: str) -> str:
        return providers.redact(text, self.secrets())

    def observed(self, sup: HostSupervisor, rt: AgentRuntime, pane: Pane | None) -> None:
        """After each observation cycle: adopt, count reports, check drift."""
        if not rt.spec.providers and rt.spec.drift == "off":
            return  # nothing to learn about this agent (and this runs per agent per cycle)
        slot = self._slot(sup, rt)
        hb = rt.heartbeat
        alive = pane is not None and not pane.dead
        chain = rt.spec.providers
        if slot.active is None and chain and alive and hb is not None and hb.provider in chain:
            # Adopted after a fleetd restart: believe the agent about where it runs,
            # so a fresh fleetd causes neither a false failover nor a false drift.
            slot.active = hb.provider
            log.info("provider.adopted", agent=rt.name, provider=hb.provider)
        current = self._current_beat(rt) if alive else None
        if (
            current is not None
            and slot.active is not None
            and not slot.moving
            and current.ts != slot.last_report_ts
        ):
            slot.last_report_ts = current.ts  # each beat counts once
            spec = self.specs.get(slot.active)
            if (
                spec is not None
                and current.provider in (None, slot.active)
                and providers.classify_report(current.status, None, spec)
            ):
                self._report(slot.active, f"{rt.name} reports status={current.status}")
        self._drift(sup, rt, slot, pane if alive else None, current)

    def _current_beat(self, rt: AgentRuntime) -> Heartbeat | None:
        """The last heartbeat, if fresh and written by the agent's current process."""
        hb, a = rt.heartbeat, rt.agent
        if hb is None or a.pid is None or hb.pid != a.pid or a.last_beat_at is None:
            return None
        if self.clock() - a.last_beat_at > rt.spec.staleness:
            return None
        return hb

    # --- drift ------------------------------------------------------------------------

    def _drift(
        self,
        sup: HostSupervisor,
        rt: AgentRuntime,
        slot: Slot,
        pane: Pane | None,
        hb: Heartbeat | None,
    ) -> None:
        spec = rt.spec
        if spec.drift == "off":
            if slot.drift:
                slot.drift = ()
                self._close_drift(sup, rt, slot, "drift checks turned off")
            return
        if slot.moving or rt.agent.state is not State.RUNNING:
            return  # mid-restart: what we see is the old process or nothing yet
        active = self.specs.get(slot.active or "")
        pane_cmd = pane.current_command if pane is not None else None
        cmdline = None
        if pane is not None and sup.is_local:
            if slot.cmdline_pid != pane.pid:
                slot.cmdline_pid, slot.cmdline = pane.pid, _cmdline(pane.pid)
            cmdline = slot.cmdline
        found = drift.detect(spec, active, hb, pane_cmd, cmdline)
        seen = drift.observed(spec, active, hb, pane_cmd, cmdline)
        events, correct, state = drift.drift_step(
            slot.drift, found, spec.drift, seen=seen, agent=rt.name
        )
        slot.drift = state
        for ev in events:
            if ev.kind == "drift_detected" and ev.alert:
                slot.drift_incident = f"drift-{rt.name}-{_hex()}"
                self.store.open_incident(
                    slot.drift_incident, "agent", rt.name, ev.kind, self.wall()
                )
            self.bus.publish(
                ev.kind,
                ev.message,
                host=sup.host.name,
                agent=rt.name,
                state=str(rt.agent.state),
                incident=slot.drift_incident,
                alert=ev.alert,
                data=ev.fields,
            )
            if ev.kind == "drift_cleared":
                self._close_drift(sup, rt, slot, None)
        if correct and self._tg is not None:
            slot.moving = True
            why = "drift correction: " + "; ".join(
                f"{m.field} {m.actual!r} -> {m.declared!r}" for m in state
            )
            self._tg.start_soon(self._command, sup, rt.name, slot, "correct", why, None)

    def _close_drift(
        self, sup: HostSupervisor, rt: AgentRuntime, slot: Slot, why: str | None
    ) -> None:
        if slot.drift_incident is None:
            return
        self.store.close_incident(slot.drift_incident, self.wall())
        if why is not None:
            self.bus.publish(
                "drift_cleared",
                f"{rt.name}: {why}",
                host=sup.host.name,
                agent=rt.name,
                incident=slot.drift_incident,
            )
        slot.drift_incident = None

    # --- decisions ----------------------------------------------------------------

    def _healthy(self, name: str) -> bool:
        b = self.boards.get(name)
        return b is not None and b.state is Health.HEALTHY and not b.manual

    def evaluate(self) -> None:
        """Tick every breaker, keep the all-down incident, move agents as choose() says."""
        if not self.specs:
            return  # no providers in the roster: nothing to decide, twice a second
        now = self.clock()
        for name, spec in self.specs.items():
            self._apply(*providers.on_tick(self.boards[name], spec, now))
        chains = {
            rt.name: rt.spec.providers
            for _, rt in self._runtimes()
            if rt.spec.providers and rt.agent.state not in (State.STOPPED, State.PAUSED)
        }
        stuck = providers.stranded(chains, self.boards)
        for ev in providers.all_down_step(self.all_down, stuck):
            self._publish_all_down(ev)
        self.all_down = stuck
        for sup, rt in self._runtimes():
            if rt.spec.providers:
                self._decide(sup, rt, now)

    def _publish_all_down(self, ev: ProviderEvent) -> None:
        if ev.kind == "providers_all_down" and self.all_down_incident is None:
            self.all_down_incident = f"providers-all-down-{_hex()}"
            self.store.open_incident(
                self.all_down_incident, "fleet", "providers", ev.kind, self.wall()
            )
        incident = self.all_down_incident
        self.bus.publish(ev.kind, ev.message, incident=incident, alert=ev.alert, data=ev.fields)
        if ev.kind == "providers_all_down_cleared" and incident is not None:
            self.store.close_incident(incident, self.wall())
            self.all_down_incident = None

    def _idle(self, rt: AgentRuntime) -> bool | None:
        hb = self._current_beat(rt)
        if hb is None:
            return None
        busy = hb.is_busy
        return None if busy is None else not busy

    def _decide(self, sup: HostSupervisor, rt: AgentRuntime, now: float) -> None:
        chain = rt.spec.providers
        slot = self._slot(sup, rt)
        if not chain or slot.moving:
            return
        if rt.agent.state not in MOVABLE:
            # Not running: nothing to move. Its next spawn asks provider_for.
            slot.waiting_since = None
            return
        if slot.active is None:
            # Running, but not started by this fleetd and silent about its provider.
            pick = providers.choose(chain, None, self.boards, self.specs, now, None, None)
            slot.active = pick.to or chain[0]
            return
        if slot.pinned is not None:
            if slot.pinned == slot.active and self._healthy(slot.active):
                return  # operator's choice holds while its provider is healthy
            slot.pinned = None
        pick = providers.choose(
            chain, slot.active, self.boards, self.specs, now, self._idle(rt), slot.waiting_since
        )
        if pick.kind in ("failover", "failback") and pick.to is not None:
            self._start_move(sup, rt, slot, pick.kind, pick.to, pick.reason)
        elif pick.kind == "wait_for_idle":
            if slot.waiting_since is None:
                spec = self.specs[pick.to or ""]
                self.bus.publish(
                    "failback_deferred",
                    f"{rt.name}: failback to {pick.to} waits until it is idle "
                    f"(at most {spec.failback_max_wait:g}s)",
                    host=sup.host.name,
                    agent=rt.name,
                    state=str(rt.agent.state),
                    data={"from": slot.active, "to": pick.to},
                )
            slot.waiting_since = pick.waiting_since
        elif pick.kind == "stay":
            slot.waiting_since = None

    def _record_move(
        self, sup: HostSupervisor, rt: AgentRuntime, slot: Slot, kind: str, to: str, why: str
    ) -> None:
        old = slot.active
        slot.active = to
        slot.waiting_since = None
        slot.last_report_ts = None
        slot.pane_lines = None
        if kind == "failover":
            slot.failovers += 1
        else:
            slot.failbacks += 1
        incident = self.incidents.get(old or "")
        self.bus.publish(
            kind,  # "failover" / "failback": the kinds history and metrics count
            f"{rt.name} {'fails over' if kind == 'failover' else 'fails back'} "
            f"from {old} to {to}: {why}",
            host=sup.host.name,
            agent=rt.name,
            state=str(rt.agent.state),
            incident=incident if kind == "failover" else None,
            data={"from": old, "to": to, "reason": why},
        )

    def _start_move(
        self,
        sup: HostSupervisor,
        rt: AgentRuntime,
        slot: Slot,
        kind: str,
        to: str,
        why: str,
        uid: int | None = None,
    ) -> None:
        old = slot.active
        self._record_move(sup, rt, slot, kind, to, why)
        slot.moving = True  # set before yielding: the next evaluate() must not move it again
        assert self._tg is not None
        self._tg.start_soon(
            self._command, sup, rt.name, slot, "restart", f"{kind} to {to}", old, uid
        )

    async def _command(
        self,
        sup: HostSupervisor,
        name: str,
        slot: Slot,
        verb: str,
        reason: str,
        revert_to: str | None,
        uid: int | None = None,
    ) -> None:
        try:
            await sup.command(name, verb, uid, reason=reason)
        except FleetError as exc:
            log.warning("provider.move.failed", agent=name, verb=verb, error=exc.message)
            if verb == "restart" and revert_to is not None:
                slot.active = revert_to  # not restarted: it still runs where it was
        except KeyError:
            pass  # removed by a reload meanwhile
        finally:
            slot.moving = False
            self.wake()

    # --- operator commands ----------------------------------------------------------

    async def operator_move(
        self, agent: Any, kind: str, to: Any, uid: int | None
    ) -> dict[str, Any]:
        """``failover`` (to the next healthy provider, or ``to``) or ``failback`` (to the
        earliest healthy provider of the chain, hold-down waived)."""
        sup, rt = self._find(agent)
        chain = rt.spec.providers
        slot = self._slot(sup, rt)
        if not chain:
            raise ProviderError(f"{rt.name} has no provider chain", agent=rt.name)
        if slot.moving:
            raise ProviderError(f"{rt.name} is being restarted already; try again", agent=rt.name)
        if rt.agent.state not in MOVABLE:
            raise ProviderError(f"{rt.name} is {rt.agent.state}; start it first", agent=rt.name)
        current = slot.active
        if kind == "failover":
            if to is not None:
                if not isinstance(to, str):
                    raise BadArguments("'to' must be a provider name")
                providers.require_provider(self.specs, to)
                if to not in chain:
                    raise ProviderError(f"{to} is not in {rt.name}'s chain {list(chain)}")
                target: str | None = to
            else:
                idx = chain.index(current) if current in chain else -1
                rest = [*chain[idx + 1 :], *chain[: max(idx, 0)]]
                target = next((p for p in rest if self._healthy(p)), None)
            if target is None or not self._healthy(target):
                raise ProviderError(f"no healthy provider to fail {rt.name} over to", agent=rt.name)
        else:
            target = next((p for p in chain if self._healthy(p)), None)
            if target is None:
                raise ProviderError(f"no healthy provider in {rt.name}'s chain", agent=rt.name)
        slot.pinned = target if kind == "failover" else None
        if target == current:
            return {"agent": rt.name, "provider": current, "moved": False}
        self._start_move(sup, rt, slot, kind, target, f"operator (uid {uid})", uid)
        return {"agent": rt.name, "from": current, "provider": target, "moved": True}

    async def handle(self, cmd: str, args: Mapping[str, Any], uid: int) -> Any:
        if cmd == "providers":
            return self.describe()
        if cmd in ("failover", "failback"):
            return await self.operator_move(args.get("agent"), cmd, args.get("to"), uid)
        if cmd == "provider":
            name, action = args.get("provider"), args.get("action")
            if not isinstance(name, str) or action not in ("down", "up"):
                raise BadArguments("provider: 'provider' must be a name, 'action' down or up")
            return self.set_manual(name, action == "down", f"uid {uid}")
        raise BadArguments(f"{cmd} is not a provider command")

    # --- views ----------------------------------------------------------------------

    def provider_row(self, name: str) -> dict[str, Any]:
        spec, b = self.specs[name], self.boards[name]
        now, wall = self.clock(), self.wall()
        return {
            "name": name,
            "state": str(b.state),
            "manual": b.manual,
            "since": round(wall - (now - b.since), 3),
            "reason": b.reason,
            "model": spec.model,
            "probe": spec.probe_url is not None,
            "outages": b.outages,
            "hold_down": providers.current_hold_down(b, spec, now),
            "healthy_for": None if b.healthy_since is None else round(now - b.healthy_since, 3),
            "failures_in_window": len(b.failures),
            "incident": self.incidents.get(name),
            "agents": sorted(n for n, s in self.slots.items() if s.active == name),
            "secret_env": list(spec.secret_env),  # names only, never values
        }

    def describe(self) -> dict[str, Any]:
        return {
            "providers": [self.provider_row(n) for n in sorted(self.specs)],
            "all_down": None
            if self.all_down is None
            else {
                "agents": list(self.all_down.agents),
                "providers": list(self.all_down.providers),
                "incident": self.all_down_incident,
            },
        }

    def agent_row(self, name: str) -> dict[str, Any]:
        """Columns for ``ps``/``show``: the provider fleetd runs it on, and open drift."""
        slot = self.slots.get(name)
        if slot is None:
            return {"provider": None, "drift": None}
        # One line per mismatch, even when heartbeat and command line both show it.
        parts = dict.fromkeys(f"{m.field} {m.actual} (roster: {m.declared})" for m in slot.drift)
        text = "; ".join(parts)
        return {
            "provider": slot.active,
            "pinned": slot.pinned,
            "failback_waiting": slot.waiting_since is not None,
            "failovers": slot.failovers,
            "failbacks": slot.failbacks,
            "drift": text or None,
            "drift_incident": slot.drift_incident,
        }


def _hex() -> str:
    return uuid.uuid4().hex[:8]


def _cmdline(pid: int) -> list[str] | None:
    # /proc directly: a quarter of psutil's cost, and this runs for every agent.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    args = [a.decode("utf-8", "replace") for a in raw.split(b"\0")]
    if args and args[-1] == "":
        args.pop()
    return args or None


__all__ = ["ProviderManager", "Slot", "new_lines"]
