"""Supervision of one host: observe, feed the decision core, execute its actions.

Shape:

* one *cycle* per ``poll_interval`` (the backstop): one ``Host.observe`` batch
  (all tmux panes of the host's sockets, every heartbeat file, health), whose
  results are posted to the agents;
* one *worker task per agent*, the only place that agent's state changes: it
  takes inputs from its inbox one at a time, calls ``policy.decide`` and carries
  out the returned actions before taking the next input. Actions on one agent are
  thus serialized, and different agents proceed concurrently;
* a worker sleeps until its agent's next deadline (backoff end, heartbeat
  deadline), so a stale heartbeat is seen at its deadline, not at the next cycle;
* on the local host a pidfd per agent process wakes the worker the moment the
  process exits.

An observation taken before the agent's last spawn or kill is stale and dropped
(``acted_at``), so a snapshot from before a respawn can never make fleetd think
the new process died or was replaced.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fleetd import policy
from fleetd.config import AgentSpec, ProviderSpec, Roster
from fleetd.errors import FleetError, HostError, UnknownAgent
from fleetd.events import EventBus
from fleetd.executor import Executor
from fleetd.heartbeat import Heartbeat, HeartbeatProblem, parse_heartbeat
from fleetd.hosts.base import Host, HostSnapshot, ObserveRequest
from fleetd.hosts.local import ExitWatcher, LocalHost, read_small_file, zombie_status
from fleetd.hostwatch import HostWatch
from fleetd.model import (
    Action,
    Beat,
    CaptureForensics,
    Command,
    Ctx,
    Emit,
    HostDown,
    Input,
    Kill,
    PaneAlive,
    PaneDead,
    PaneMissing,
    Spawn,
    SpawnDone,
    SpawnFailed,
    State,
    Tick,
)
from fleetd.policy import Agent
from fleetd.render import heartbeat_path, render_argv, render_env, variables
from fleetd.store import Store
from fleetd.tmux import Pane, PaneList

log = structlog.get_logger("fleetd.supervisor")

INBOX_SIZE = 64
RECHECK_TRIES = 8
DEADLINE_REREADS = 4
DEAD_STATUS_GRACE = 3.0
RECHECK_PAUSE = 0.01


@dataclass
class Recheck:
    """Shell-level input: look at the agent's pane now (its process just exited)."""


@dataclass
class Sync:
    """Shell-level input: set ``done`` once everything posted before is handled."""

    done: anyio.Event


@dataclass
class CommandRequest:
    command: Command
    done: anyio.Event = field(default_factory=anyio.Event)
    result: dict[str, Any] | None = None
    error: FleetError | None = None


InboxItem = tuple[Input | Recheck | Sync | CommandRequest, float | None]


@dataclass
class AgentRuntime:
    spec: AgentSpec
    agent: Agent
    send: MemoryObjectSendStream[InboxItem]
    receive: MemoryObjectReceiveStream[InboxItem]
    pane: Pane | None = None
    heartbeat: Heartbeat | None = None
    heartbeat_raw: str | None = None
    heartbeat_problem: HeartbeatProblem | None = None
    acted_at: float = 0.0
    forensics_id: int | None = None
    scrollback_tail: str | None = None
    # When a remote pane was first seen dead with no exit status (tmux not done yet).
    dead_unsettled_at: float | None = None
    cancel: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    @property
    def name(self) -> str:
        return self.spec.name


class HostSupervisor:
    def __init__(
        self,
        host: Host,
        roster: Roster,
        store: Store,
        bus: EventBus,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.host = host
        self.roster = roster
        self.settings = roster.settings
        self.store = store
        self.bus = bus
        self.clock = clock
        self.wall = wall
        self.executor = Executor(host, roster.settings)
        self.agents: dict[str, AgentRuntime] = {}
        self.on_progress = on_progress
        self.is_local = isinstance(host, LocalHost)
        self._watcher: ExitWatcher | None = None
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self.last_cycle: float | None = None
        self.last_cycle_duration: float | None = None
        self.last_snapshot: HostSnapshot | None = None
        self.host_incident: str | None = None
        self.reachable = True
        self.cycles = 0
        # Host-level incidents (unreachable, health, escalation): one per host.
        self.watch = HostWatch(
            host, lambda: self.roster.hosts[self.host.name], store, bus, clock=clock, wall=wall
        )
        self.cycle_interval = roster.settings.poll_interval
        self.round_trips_at_cycle: int | None = None
        # Actions on different agents run concurrently, at most this many per host
        # (a mass death must not fork hundreds of tmux clients or SSH channels at once).
        self._actions = anyio.Semaphore(roster.settings.max_concurrent_actions)
        # Hooks for provider failover and drift (set by the daemon; no-ops here):
        # which provider an agent runs on, the environment that provider needs,
        # and a look at each agent after every observation cycle.
        self.provider_for: Callable[[AgentRuntime], ProviderSpec | None] = lambda rt: None
        self.provider_env: Callable[[AgentRuntime, ProviderSpec], dict[str, str]] = lambda rt, p: {}
        self.observed: Callable[[AgentRuntime, Pane | None], None] | None = None
        # Applied to captured scrollback and heartbeat text before they are stored
        # or sent anywhere (provider secrets must never reach the store or journal).
        self.redact: Callable[[str], str] = lambda text: text

    # --- setup ----------------------------------------------------------------

    def _new_runtime(self, spec: AgentSpec, agent: Agent) -> AgentRuntime:
        send, receive = anyio.create_memory_object_stream[InboxItem](INBOX_SIZE)
        return AgentRuntime(spec=spec, agent=agent, send=send, receive=receive)

    def initial_agent(
        self, spec: AgentSpec, holds: dict[str, str], incidents: dict[str, str]
    ) -> Agent:
        now = self.clock()
        hold = holds.get(spec.name)
        state = {"stopped": State.STOPPED, "paused": State.PAUSED}.get(hold or "", State.UNKNOWN)
        return Agent(name=spec.name, state=state, since=now, incident=incidents.get(spec.name))

    def add_agent(self, spec: AgentSpec, agent: Agent) -> AgentRuntime:
        rt = self._new_runtime(spec, agent)
        self.agents[spec.name] = rt
        if self._tg is not None:
            self._tg.start_soon(self._worker, rt)
        return rt

    # --- main loop --------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Adopt what runs, report started, then cycle until cancelled."""
        if self.is_local:
            self._watcher = ExitWatcher(self._on_exit)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for rt in self.agents.values():
                    tg.start_soon(self._worker, rt)
                await self.cycle()
                await self.sync()
                task_status.started()
                while True:
                    with anyio.move_on_after(self.cycle_interval):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    await self.cycle()
        finally:
            if self._watcher is not None:
                self._watcher.close()
            # Leave no SSH connection (and its asyncssh tasks) behind.
            with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                await self.host.close()

    def wake(self) -> None:
        """Run a cycle now (coalesced with any already requested)."""
        self._wake.set()

    async def sync(self) -> None:
        """Wait until every agent has handled everything posted so far."""
        events = []
        for rt in list(self.agents.values()):
            ev = anyio.Event()
            events.append(ev)
            await rt.send.send((Sync(ev), None))
        for ev in events:
            await ev.wait()

    def _request(self) -> ObserveRequest:
        sockets = tuple(sorted({rt.spec.tmux_socket for rt in self.agents.values()}))
        files = tuple(sorted({p for rt in self.agents.values() if (p := heartbeat_path(rt.spec))}))
        spec = self.roster.hosts.get(self.host.name)
        health = spec.health.disk_path if spec is not None else "/"
        return ObserveRequest(sockets=sockets, files=files, health_path=health)

    async def cycle(self) -> None:
        started = self.clock()
        try:
            if self.watch.in_backoff():
                # SSH reconnect backoff: the incident is open and the agents are
                # UNKNOWN already; skip quietly (no network, no new events).
                self._maybe_escalate()
                return
            snap = await self.host.observe(self._request())
        except HostError as exc:
            self.watch.down(exc)
            self._host_down(str(exc.message))
            self._maybe_escalate()
            return
        finally:
            if self.on_progress is not None:
                self.on_progress()
        self.cycles += 1
        # Read together with `cycles`, so that the two counters agree in `hosts`.
        self.round_trips_at_cycle = getattr(self.host, "round_trips", None)
        self.reachable = True
        self.watch.up(snap)
        self.last_snapshot = snap
        self._check_tmux_servers(snap)
        answered = self.clock()
        for rt in list(self.agents.values()):
            self._post_observation(rt, snap, started, answered)
        self.last_cycle = self.wall()
        self.last_cycle_duration = self.clock() - started

    def _maybe_escalate(self) -> None:
        if self._tg is not None and self.watch.escalation_due():
            self._tg.start_soon(self.watch.escalate)

    def _host_down(self, reason: str) -> None:
        # The host incident and its one alert are HostWatch's (see cycle()).
        self.reachable = False
        for rt in self.agents.values():
            self.post(rt, HostDown(reason), None)

    def _tmux_gone(self, gone: set[str]) -> str:
        """Open (once) the host incident for vanished tmux servers; return its id.

        Reached from a cycle or from the first death event the vanished server
        caused, whichever comes first; either way one alert for the host.
        """
        if self.host_incident is None:
            affected = [rt.name for rt in self.agents.values() if rt.spec.tmux_socket in gone]
            self.host_incident = f"{self.host.name}-tmux-{uuid.uuid4().hex[:8]}"
            sockets = ", ".join(sorted(gone))
            self.store.open_incident(
                self.host_incident, "host", self.host.name, "tmux_gone", self.wall()
            )
            self.bus.publish(
                "host_tmux_gone",
                f"tmux server(s) {sockets} on {self.host.name} disappeared; "
                f"{len(affected)} agent(s) lost, restoring them",
                host=self.host.name,
                incident=self.host_incident,
                alert=True,
                data={"sockets": sorted(gone), "agents": affected},
            )
        return self.host_incident

    def _check_tmux_servers(self, snap: HostSnapshot) -> None:
        """A vanished tmux server is one host incident, not one alert per agent."""
        gone = {s for s, pl in snap.panes.items() if not pl.server_running}
        affected = [
            rt
            for rt in self.agents.values()
            if rt.spec.tmux_socket in gone
            and rt.agent.state in (State.RUNNING, State.STARTING, State.HUNG)
        ]
        if affected:
            self._tmux_gone(gone)  # opens the host incident once
        elif (
            self.host_incident is not None
            and not gone
            and all(
                rt.agent.state in (State.RUNNING, State.STOPPED, State.PAUSED, State.FATAL)
                for rt in self.agents.values()
            )
        ):
            self.store.close_incident(self.host_incident, self.wall())
            self.bus.publish(
                "host_recovered",
                f"all agents on {self.host.name} are back",
                host=self.host.name,
                incident=self.host_incident,
            )
            self.host_incident = None

    def _post_observation(
        self, rt: AgentRuntime, snap: HostSnapshot, at: float, answered: float
    ) -> None:
        """Post one cycle's findings. ``at`` (when the cycle began) dates the
        observation for the staleness guard; ``answered`` (when the host's answer,
        and its clock ``snap.wall``, came back) anchors heartbeat ages, since the
        files may have been read long after the cycle began (a slow tmux)."""
        plist: PaneList | None = snap.panes.get(rt.spec.tmux_socket)
        hb_path = heartbeat_path(rt.spec)
        if hb_path is not None:
            beat = self._beat_from(rt, snap.files.get(hb_path), snap.wall, answered)
            if beat is not None and beat.ts_wall != rt.agent.last_beat_wall:
                self.post(rt, beat, at)
        if plist is None:
            return  # this socket could not be listed: no news is not bad news
        pane = plist.panes.get(rt.name)
        if at >= rt.acted_at:
            rt.pane = pane
            if self.observed is not None:
                self.observed(rt, pane)
        # Post only what can change a decision: with hundreds of agents, a no-op
        # decision per agent per cycle is most of fleetd's idle CPU. A live pane
        # running the process we know is nothing new; local timers are the
        # workers' own (the Tick here is only a backstop for one that is due).
        a = rt.agent
        unchanged = (
            pane is not None
            and not pane.dead
            and pane.pid == a.pid
            and a.state in (State.STARTING, State.RUNNING, State.HUNG, State.PAUSED)
        )
        if self._await_exit_status(rt, pane):
            return  # it died; no Tick either, or a stale heartbeat would call it a hang
        if not unchanged:
            self.post(rt, self._pane_input(rt, pane, plist.server_running), at)
        wake = policy.next_wake(a, rt.spec)
        if not self.is_local or (wake is not None and wake <= self.clock()):
            self.post(rt, Tick(), at)

    def _await_exit_status(self, rt: AgentRuntime, pane: Pane | None) -> bool:
        """True while a remote pane is dead but tmux has not recorded how it ended.

        tmux can mark a pane dead before it reaps the process; locally the status is
        read from the zombie, remotely fleetd waits up to DEAD_STATUS_GRACE so the
        forensics carry the exit status or signal, then decides without it.
        """
        unsettled = (
            not self.is_local
            and pane is not None
            and pane.dead
            and pane.dead_status is None
            and pane.dead_signal is None
        )
        if not unsettled:
            rt.dead_unsettled_at = None
            return False
        now = self.clock()
        if rt.dead_unsettled_at is None:
            rt.dead_unsettled_at = now
            self.wake()  # look again soon rather than a whole poll interval later
        return now - rt.dead_unsettled_at < DEAD_STATUS_GRACE

    def _pane_input(self, rt: AgentRuntime, pane: Pane | None, server: bool) -> Input:
        if pane is None:
            return PaneMissing(host_incident=None if server else self.host_incident)
        if pane.dead:
            status, sig = pane.dead_status, pane.dead_signal
            if status is None and sig is None and self.is_local:
                status, sig = zombie_status(pane.pid) or (None, None)
            return PaneDead(pane.pid, status, sig, pane.dead_time)
        return PaneAlive(pane.pid)

    def _beat_from(
        self, rt: AgentRuntime, data: bytes | None, host_wall: float, at: float
    ) -> Beat | None:
        parsed = parse_heartbeat(data)
        if isinstance(parsed, HeartbeatProblem):
            rt.heartbeat_problem = parsed
            return None
        rt.heartbeat_problem = None
        rt.heartbeat = parsed
        rt.heartbeat_raw = (data or b"").decode("utf-8", "replace")
        # Age measured on the host's own clock; a future-dated beat counts as "now".
        age = max(0.0, host_wall - parsed.ts)
        return Beat(parsed.ts, at - age, parsed.status, parsed.is_busy)

    def post(self, rt: AgentRuntime, inp: Input | Recheck, observed_at: float | None) -> None:
        item: InboxItem = (inp, observed_at)
        try:
            rt.send.send_nowait(item)
        except anyio.WouldBlock:
            # The worker is busy (a long kill). A routine observation can go: the
            # next cycle observes again. A death event or a lost host cannot (cycles
            # are skipped while an SSH host is in reconnect backoff): it waits.
            if isinstance(inp, Recheck | HostDown) and self._tg is not None:
                self._tg.start_soon(self._post_later, rt, item)
            else:
                log.debug("agent.inbox.full", agent=rt.name)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    @staticmethod
    async def _post_later(rt: AgentRuntime, item: InboxItem) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await rt.send.send(item)

    def _on_exit(self, pid: int) -> None:
        for rt in self.agents.values():
            if rt.agent.pid == pid:
                self.post(rt, Recheck(), None)
                return

    # --- commands -------------------------------------------------------------

    async def command(
        self, name: str, verb: str, uid: int | None, reason: str = ""
    ) -> dict[str, Any]:
        rt = self.agents[name]
        req = CommandRequest(Command(verb, self.clock(), uid, reason))
        await rt.send.send((req, None))
        await req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    # --- the per-agent worker -------------------------------------------------

    async def _worker(self, rt: AgentRuntime) -> None:
        with rt.cancel:
            while True:
                wake_at = policy.next_wake(rt.agent, rt.spec)
                item: InboxItem | None = None
                if wake_at is None:
                    item = await rt.receive.receive()
                else:
                    with anyio.move_on_after(max(0.0, wake_at - self.clock())):
                        item = await rt.receive.receive()
                try:
                    if item is None:
                        await self._deadline(rt)
                    else:
                        await self._handle_item(rt, item)
                except FleetError as exc:
                    log.warning(
                        "agent.step.failed", agent=rt.name, code=exc.code, error=exc.message
                    )

    async def _deadline(self, rt: AgentRuntime) -> None:
        """A deadline passed: re-read the heartbeat first, so a beat written since
        the last cycle is never mistaken for a hang. A read that finds the file
        torn, empty or missing (a writer caught mid-write) is retried a few times
        within one heartbeat interval before the deadline is allowed to count."""
        if not self.is_local:
            await self._remote_deadline(rt)
            return
        path = heartbeat_path(rt.spec)
        if path is not None and rt.agent.state in (State.STARTING, State.RUNNING):
            for _ in range(DEADLINE_REREADS):
                data = read_small_file(self.host.expand_path(path))
                beat = self._beat_from(rt, data, self.wall(), self.clock())
                if beat is not None:
                    await self.feed(rt, beat)
                    break
                await anyio.sleep(rt.spec.heartbeat_interval / DEADLINE_REREADS)
        await self.feed(rt, Tick())

    async def _remote_deadline(self, rt: AgentRuntime) -> None:
        """A remote agent's deadline: decide on a fresh observation, not a stale one.

        Reading the heartbeat now would cost one SSH round trip per agent; instead
        ask for an early cycle (``wake()`` coalesces the requests of every agent
        whose deadline passed) and handle what that cycle posts: its beat, its
        pane and the Tick that judges the deadline. No extra round trip."""
        self.wake()
        spec = self.roster.hosts.get(self.host.name)
        bound = self.settings.poll_interval + (spec.connect_timeout if spec else 10.0) + 5.0
        item: InboxItem | None = None
        with anyio.move_on_after(bound):
            item = await rt.receive.receive()
        while item is not None:
            await self._handle_item(rt, item)
            try:
                # The cycle posts all of an agent's inputs at once: take them all.
                item = rt.receive.receive_nowait()
            except anyio.WouldBlock:
                item = None

    async def _handle_item(self, rt: AgentRuntime, item: InboxItem) -> None:
        inp, observed_at = item
        if isinstance(inp, Sync):
            inp.done.set()
            return
        if isinstance(inp, CommandRequest):
            try:
                await self.feed(rt, inp.command)
                inp.result = self.describe(rt)
            except FleetError as exc:
                inp.error = exc
            finally:
                inp.done.set()
            return
        if observed_at is not None and observed_at < rt.acted_at:
            return  # observed before our last spawn/kill: stale
        if isinstance(inp, Recheck):
            pane, server = await self._settled_pane(rt)
            rt.pane = pane
            if not server:
                self._tmux_gone({rt.spec.tmux_socket})
            await self.feed(rt, self._pane_input(rt, pane, server))
            return
        await self.feed(rt, inp)

    async def _settled_pane(self, rt: AgentRuntime) -> tuple[Pane | None, bool]:
        """The pane after its process exited, and whether its tmux server still runs.

        tmux notices the pty closing before it reaps the child, so for a moment a
        pane can look alive, or dead with no exit status; wait briefly (bounded)
        for tmux to record how it ended, or read it from the zombie locally."""
        pane = None
        for attempt in range(RECHECK_TRIES):
            plist = await self.executor.pane_list(rt.spec.tmux_socket)
            if plist is not None and not plist.server_running:
                return None, False
            pane = None if plist is None else plist.panes.get(rt.name)
            if pane is None or (
                pane.dead and (pane.dead_status is not None or pane.dead_signal is not None)
            ):
                return pane, True
            if self.is_local:
                status = zombie_status(pane.pid)
                if status is not None:
                    dead = replace(pane, dead=True, dead_status=status[0], dead_signal=status[1])
                    return dead, True
            if pane.dead and attempt >= 2:
                return pane, True  # dead; tmux will not say how: record it as unknown
            await anyio.sleep(RECHECK_PAUSE * (attempt + 1))
        return pane, True

    async def feed(self, rt: AgentRuntime, inp: Input) -> None:
        """Decide on one input and carry out the actions, in order."""
        ctx = Ctx(now=self.clock(), rand=random.random(), new_id=self._incident_id(rt))
        before = rt.agent
        after, actions = policy.decide(before, rt.spec, inp, ctx)
        rt.agent = after
        self._persist_hold(before, after)
        if isinstance(inp, PaneAlive) and self._watcher is not None and after.pid == inp.pid:
            self._watcher.watch(inp.pid)
        for action in actions:
            try:
                await self._execute(rt, action)
            except (FleetError, OSError) as exc:
                # The decision is already made: a failed kill or capture must not stop
                # the spawn that follows it (respawn-pane -k kills what is left), and a
                # failed spawn is fed back as SpawnFailed inside _spawn. A hung agent
                # whose kill failed is retried by the core (HUNG has a deadline).
                msg = exc.message if isinstance(exc, FleetError) else str(exc)
                log.warning(
                    "agent.action.failed",
                    agent=rt.name,
                    action=type(action).__name__,
                    error=msg,
                )

    def _incident_id(self, rt: AgentRuntime) -> str:
        return f"{rt.name}-{uuid.uuid4().hex[:8]}"

    def _persist_hold(self, before: Agent, after: Agent) -> None:
        """Operator holds (stop, pause) survive a fleetd restart; a STOPPED that the
        restart policy chose ("never", clean exit) is not a hold."""
        if before.state == after.state:
            return
        hold: str | None = None
        if after.state is State.PAUSED:
            hold = "paused"
        elif after.state is State.STOPPED and after.reason.startswith("operator"):
            hold = "stopped"
        if hold is not None or before.state in (State.STOPPED, State.PAUSED):
            self.store.set_hold(after.name, hold, self.wall())

    async def _execute(self, rt: AgentRuntime, action: Action) -> None:
        if isinstance(action, Emit):
            self._emit(rt, action)
        elif isinstance(action, CaptureForensics):
            await self._forensics(rt, action)
        elif isinstance(action, Kill):
            async with self._actions:
                how = await self.executor.kill(rt.spec, action.pid)
            rt.acted_at = self.clock()
            log.info(
                "agent.kill.done", agent=rt.name, pid=action.pid, how=how, reason=action.reason
            )
        elif isinstance(action, Spawn):
            await self._spawn(rt, action)

    def _emit(self, rt: AgentRuntime, e: Emit) -> None:
        data = {k: v for k, v in e.fields.items() if k not in ("state", "incident")}
        incident = e.fields.get("incident") or rt.agent.incident
        extra: dict[str, Any] = {}
        if rt.forensics_id is not None and e.kind in ("agent_dead", "agent_hung"):
            data["forensics_id"] = rt.forensics_id
            if rt.scrollback_tail:
                extra["scrollback"] = rt.scrollback_tail
        ts = None
        died = data.get("died_wall")
        # tmux dates a death to the whole second: better than "now" only when the
        # death was noticed late (fleetd was down, a cycle was slow).
        if isinstance(died, int | float) and died <= self.wall() - 1.0:
            ts = float(died)
        if e.alert and incident:
            self.store.open_incident(str(incident), "agent", rt.name, e.kind, self.wall())
        if e.kind == "agent_recovered" and incident:
            self.store.close_incident(str(incident), self.wall())
        self.bus.publish(
            e.kind,
            e.message,
            host=self.host.name,
            agent=rt.name,
            state=str(rt.agent.state),
            incident=str(incident) if incident else None,
            alert=e.alert,
            data=data,
            ts=ts,
            extra=extra or None,
        )

    async def _forensics(self, rt: AgentRuntime, action: CaptureForensics) -> None:
        pane = rt.pane if rt.pane is not None else await self.executor.pane_of(rt.spec)
        async with self._actions:
            scrollback = self.redact(await self.executor.capture(rt.spec, pane))
        rt.forensics_id = self.store.add_forensics(
            self.wall(),
            self.host.name,
            rt.name,
            action.reason,
            exit_status=action.exit_status,
            signal=action.signal,
            pid=pane.pid if pane else rt.agent.pid,
            scrollback=scrollback,
            heartbeat=None if rt.heartbeat_raw is None else self.redact(rt.heartbeat_raw),
        )
        rt.scrollback_tail = scrollback

    def render(self, rt: AgentRuntime) -> tuple[list[str], str, dict[str, str]]:
        workdir = self.host.expand_path(rt.spec.workdir)
        hb = heartbeat_path(rt.spec)
        provider = self.provider_for(rt)
        values = variables(rt.spec, provider, workdir, hb)
        penv = self.provider_env(rt, provider) if provider is not None else None
        return render_argv(rt.spec.command, values), workdir, render_env(rt.spec, values, penv)

    async def _spawn(self, rt: AgentRuntime, action: Spawn) -> None:
        try:
            # Inside the try: rendering fails (provider.error) when a secret is missing.
            argv, workdir, env = self.render(rt)
            async with self._actions:
                pane_id, pid = await self.executor.spawn(rt.spec, rt.pane, argv, workdir, env)
        except FleetError as exc:
            rt.acted_at = self.clock()
            await self.feed(rt, SpawnFailed(exc.message))
            return
        rt.acted_at = self.clock()
        rt.pane = None  # re-learned on the next observation
        rt.forensics_id = None
        rt.scrollback_tail = None
        if self._watcher is not None:
            self._watcher.watch(pid)
        await self.feed(rt, SpawnDone(pid))
        log.info("agent.spawn.done", agent=rt.name, pid=pid, pane=pane_id, reason=action.reason)

    # --- views -------------------------------------------------------------------

    def host_state(self) -> str:
        """reachable | unreachable | key_rejected (see docs/remote.md)."""
        if self.reachable:
            return "reachable"
        return "key_rejected" if self.watch.down_code == "host.key_rejected" else "unreachable"

    def describe(self, rt: AgentRuntime) -> dict[str, Any]:
        a = rt.agent
        now_mono, now_wall = self.clock(), self.wall()
        window = rt.spec.intensity.window
        hb = rt.heartbeat
        return {
            "name": rt.name,
            "host": self.host.name,
            "host_state": self.host_state(),
            "state": str(a.state),
            "since": round(now_wall - (now_mono - a.since), 3),
            "pid": a.pid,
            "restarts": len([t for t in a.restarts if now_mono - t < window]),
            "reason": a.reason,
            "incident": a.incident,
            "heartbeat_age": None
            if a.last_beat_at is None
            else round(now_mono - a.last_beat_at, 3),
            "heartbeat_status": a.beat_status,
            "heartbeat_problem": rt.heartbeat_problem.code if rt.heartbeat_problem else None,
            "busy": a.busy,
            "model": hb.model if hb else None,
            "provider": hb.provider if hb else None,
            "runtime": hb.runtime if hb else None,
            "retry_in": None if a.retry_at is None else round(max(0.0, a.retry_at - now_mono), 3),
            "tmux": {
                "socket": rt.spec.tmux_socket,
                "session": rt.spec.tmux_session,
                "window": rt.spec.window,
            },
        }

    async def stop_worker(self, name: str) -> None:
        rt = self.agents.pop(name, None)
        if rt is not None:
            rt.cancel.cancel()
            rt.send.close()
            # Whoever still waits on a command for this agent gets an answer.
            while True:
                try:
                    item, _ = rt.receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                if isinstance(item, CommandRequest):
                    item.error = UnknownAgent(f"{name} was removed from the roster")
                    item.done.set()
                elif isinstance(item, Sync):
                    item.done.set()
