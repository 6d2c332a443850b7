"""The pure decision core: ``decide(agent, spec, input, ctx) -> (agent, actions)``.

No I/O, no clock, no randomness of its own: the shell passes ``ctx.now``
(monotonic seconds), ``ctx.rand`` (for jitter) and ``ctx.new_id`` (for an
incident that opens). Every restart, backoff, hang and intensity decision is
made here and is therefore a unit test with plain numbers.

Invariants kept by this module:

* an agent has at most one live incarnation: a Spawn is only ever returned after
  the previous process is known dead, or together with a Kill that precedes it;
* observations about an older incarnation (a pid that is not the current one)
  never move the current one;
* an incident opens at most once until the agent is healthy again, so an agent
  flapping inside its intensity window is a single incident.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fleetd import lifecycle
from fleetd.config import AgentSpec
from fleetd.errors import InvalidCommand
from fleetd.model import (
    FIRST_START,
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

S = State

# Without a heartbeat file, an agent that stays up this long counts as running.
SETTLE_WITHOUT_HEARTBEAT = 1.0
# A hung agent not dead this long after its kill's stop_timeout gets the kill again.
HUNG_KILL_RETRY = 10.0
# A beat stamped up to this long before a spawn still counts for the new process
# (clock granularity between the agent and fleetd).
BEAT_SKEW = 1.0


@dataclass(frozen=True, slots=True)
class Agent:
    """The core's view of one agent. Replaced, never mutated."""

    name: str
    state: State = S.UNKNOWN
    since: float = 0.0
    started_at: float | None = None
    pid: int | None = None
    restarts: tuple[float, ...] = ()  # automatic restarts, for backoff and intensity
    retry_at: float | None = None
    last_beat_wall: float | None = None
    last_beat_at: float | None = None
    beat_status: str | None = None
    busy: bool | None = None
    incident: str | None = None
    reason: str = ""


def backoff_delay(spec: AgentSpec, recent_restarts: int, rand: float) -> float:
    """Delay before the next automatic restart.

    The first restart after a quiet period is immediate; each further restart
    within the intensity window waits ``initial * factor**(n-1)``, capped, then
    spread by +/- ``jitter`` (a fraction) using ``rand`` in [0, 1).
    """
    if recent_restarts <= 0:
        return 0.0
    b = spec.backoff
    base = min(b.cap, b.initial * b.factor ** (recent_restarts - 1))
    spread = 1.0 + b.jitter * (2.0 * rand - 1.0)
    return max(0.0, min(b.cap * (1.0 + b.jitter), base * spread))


def should_restart(spec: AgentSpec, exit_status: int | None, signal: int | None) -> bool:
    if spec.restart == "always":
        return True
    if spec.restart == "never":
        return False
    clean = exit_status == 0 and signal is None
    return not clean


def beat_deadline(agent: Agent, spec: AgentSpec) -> float | None:
    """Monotonic time at which the agent is hung if no newer beat arrives."""
    if spec.heartbeat_file is None or agent.started_at is None:
        return None
    grace_end = agent.started_at + spec.start_grace
    if agent.last_beat_at is None:
        return grace_end
    return max(agent.last_beat_at + spec.staleness, grace_end)


def next_wake(agent: Agent, spec: AgentSpec) -> float | None:
    """Earliest time at which a Tick could change this agent; None if never."""
    if agent.state in (S.BACKOFF, S.HUNG):
        return agent.retry_at
    if agent.state in (S.STARTING, S.RUNNING) and agent.pid is not None:
        times: list[float] = []
        if agent.state is S.RUNNING and agent.incident is not None:
            times.append(agent.since + spec.recovery_settle)
        if spec.heartbeat_file is None:
            if agent.state is S.STARTING and agent.started_at is not None:
                times.append(agent.started_at + SETTLE_WITHOUT_HEARTBEAT)
        elif (deadline := beat_deadline(agent, spec)) is not None:
            times.append(deadline)
        return min(times) if times else None
    return None


def _move(agent: Agent, dst: State, now: float, **changes: object) -> Agent:
    lifecycle.check(agent.state, dst)
    since = now if dst is not agent.state else agent.since
    return replace(agent, state=dst, since=since, **changes)  # type: ignore[arg-type]


def _fields(agent: Agent, **extra: object) -> dict[str, object]:
    out: dict[str, object] = {"state": str(agent.state)}
    if agent.incident:
        out["incident"] = agent.incident
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def _open_incident(agent: Agent, ctx: Ctx) -> tuple[Agent, bool]:
    """Open an incident unless one is open; return (agent, opened_now)."""
    if agent.incident is not None:
        return agent, False
    return replace(agent, incident=ctx.new_id or f"{agent.name}-{ctx.now:.0f}"), True


def _recover(agent: Agent, spec: AgentSpec, now: float) -> tuple[Agent, list[Action]]:
    """Close the open incident once the agent has run healthily for ``recovery_settle``.

    Waiting for the settle time is what makes a flapping agent one incident: a
    death inside that time finds the incident still open and raises no new alert.
    """
    if agent.incident is None or agent.state is not S.RUNNING:
        return agent, []
    if now < agent.since + spec.recovery_settle:
        return agent, []
    emit = Emit(
        "agent_recovered",
        f"{agent.name} is running again",
        fields=_fields(agent),
    )
    return replace(agent, incident=None), [emit]


def _restart_or_park(
    agent: Agent, spec: AgentSpec, ctx: Ctx, why: str
) -> tuple[Agent, list[Action]]:
    """After a failure: restart now, back off, or go FATAL on the intensity limit."""
    now = ctx.now
    window = spec.intensity.window
    recent = tuple(t for t in agent.restarts if now - t < window)
    if len(recent) >= spec.intensity.max_restarts:
        agent = _move(agent, S.FATAL, now, restarts=recent, retry_at=None, pid=None, reason=why)
        msg = (
            f"{agent.name} restarted {len(recent)} times within {window:g}s and keeps failing "
            f"({why}); fleetd gave up: run 'fleetctl restart {agent.name}' after fixing it"
        )
        return agent, [Emit("agent_fatal", msg, alert=True, fields=_fields(agent, cause=why))]
    delay = backoff_delay(spec, len(recent), ctx.rand)
    if delay <= 0:
        agent = _move(
            agent,
            S.STARTING,
            now,
            restarts=(*recent, now),
            retry_at=None,
            started_at=now,
            pid=None,
            reason=why,
        )
        return agent, [Spawn(why)]
    agent = _move(
        agent, S.BACKOFF, now, restarts=recent, retry_at=now + delay, pid=None, reason=why
    )
    emit = Emit(
        "agent_backoff",
        f"{agent.name} will be restarted in {delay:.1f}s ({why})",
        fields=_fields(agent, delay=round(delay, 3), restarts_in_window=len(recent)),
    )
    return agent, [emit]


def _death_reason(exit_status: int | None, signal: int | None, missing: bool) -> str:
    if signal is not None:
        return f"killed by signal {signal}"
    if exit_status is not None:
        return f"exited with status {exit_status}"
    return "pane disappeared" if missing else "process gone"


def _on_death(
    agent: Agent, spec: AgentSpec, inp: PaneDead | PaneMissing, ctx: Ctx
) -> tuple[Agent, list[Action]]:
    if isinstance(inp, PaneDead):
        missing, exit_status, signal, host_incident = False, inp.exit_status, inp.signal, None
        died_wall = inp.died_wall
    else:
        missing, exit_status, signal, host_incident = True, None, None, inp.host_incident
        died_wall = None
    why = _death_reason(exit_status, signal, missing)
    actions: list[Action] = []
    was_hung = agent.state is S.HUNG

    if not was_hung:
        # A hung agent had its forensics taken before the kill; otherwise take them now.
        actions.append(CaptureForensics(why, exit_status=exit_status, signal=signal))
        agent, opened = _open_incident(agent, ctx)
        extra: dict[str, object] = {
            "exit_status": exit_status,
            "signal": signal,
            "cause": "tmux_server_gone" if host_incident else why,
            "host_incident": host_incident,
        }
        if died_wall is not None:
            extra["died_wall"] = died_wall
        alert = opened and host_incident is None
        actions.append(
            Emit(
                "agent_dead",
                f"{agent.name} died: {why}",
                alert=alert,
                fields=_fields(agent, **extra),
            )
        )
    else:
        actions.append(
            Emit(
                "agent_killed",
                f"{agent.name} was killed after hanging",
                fields=_fields(agent, exit_status=exit_status, signal=signal),
            )
        )

    restart = True if was_hung else should_restart(spec, exit_status, signal)
    if was_hung and spec.restart == "never":
        restart = False
    if not restart:
        agent = _move(agent, S.STOPPED, ctx.now, pid=None, retry_at=None, reason=why)
        actions.append(
            Emit(
                "agent_exited",
                f"{agent.name} stopped ({why}); restart policy is {spec.restart}",
                fields=_fields(agent, cause=why),
            )
        )
        return agent, actions
    agent, more = _restart_or_park(agent, spec, ctx, why)
    return agent, actions + more


def _on_command(
    agent: Agent, spec: AgentSpec, cmd: Command, ctx: Ctx
) -> tuple[Agent, list[Action]]:
    now = ctx.now
    who = {"uid": cmd.uid} if cmd.uid is not None else {}
    st = agent.state
    if cmd.verb == "start":
        if st in (S.STARTING, S.RUNNING, S.HUNG):
            return agent, []
        if st in (S.PAUSED, S.UNKNOWN):
            raise InvalidCommand(f"{agent.name} is {st}; use 'resume' for a paused agent")
        agent = _move(
            agent,
            S.STARTING,
            now,
            restarts=(),
            retry_at=None,
            started_at=now,
            pid=None,
            reason="operator start",
        )
        return agent, [
            Emit(
                "agent_start_requested",
                f"{agent.name} started by operator",
                fields=_fields(agent, **who),
            ),
            Spawn("operator start"),
        ]
    if cmd.verb == "restart":
        if (
            agent.started_at is not None
            and agent.started_at >= cmd.received
            and st
            in (
                S.STARTING,
                S.RUNNING,
            )
        ):
            return agent, []  # a restart at or after this request already happened
        if st is S.PAUSED:
            raise InvalidCommand(f"{agent.name} is paused; resume it first")
        why = cmd.reason or "operator restart"
        old_pid = agent.pid
        actions: list[Action] = [
            Emit(
                "agent_restart_requested",
                f"{agent.name} restarted: {why}",
                fields=_fields(agent, **who),
            ),
        ]
        if st in lifecycle.LIVE_STATES or st is S.UNKNOWN:
            actions.append(CaptureForensics(why))
            actions.append(Kill(why, old_pid))
        agent = _move(
            agent,
            S.STARTING,
            now,
            restarts=(),
            retry_at=None,
            started_at=now,
            pid=None,
            reason=why,
        )
        return agent, [*actions, Spawn(why)]
    if cmd.verb == "correct":
        return _on_correct(agent, spec, cmd, ctx)
    if cmd.verb == "stop":
        if st is S.STOPPED:
            return agent, []
        actions = [
            Emit("agent_stopped", f"{agent.name} stopped by operator", fields=_fields(agent, **who))
        ]
        if st in lifecycle.LIVE_STATES or st is S.PAUSED:
            actions.append(Kill("operator stop", agent.pid))
        if st is S.UNKNOWN:
            raise InvalidCommand(f"{agent.name} is UNKNOWN (host unreachable); try again later")
        agent = _move(
            agent, S.STOPPED, now, retry_at=None, pid=None, reason="operator stop", incident=None
        )
        return agent, actions
    if cmd.verb == "pause":
        if st is S.PAUSED:
            return agent, []
        agent = _move(agent, S.PAUSED, now, retry_at=None, reason="operator pause", incident=None)
        return agent, [
            Emit(
                "agent_paused",
                f"{agent.name} paused by operator: fleetd will not restart it or alert on it",
                fields=_fields(agent, **who),
            )
        ]
    if cmd.verb == "resume":
        if st is not S.PAUSED:
            return agent, []
        agent = _move(agent, S.UNKNOWN, now, reason="operator resume", started_at=None)
        return agent, [
            Emit("agent_resumed", f"{agent.name} resumed by operator", fields=_fields(agent, **who))
        ]
    raise InvalidCommand(f"unknown agent command {cmd.verb!r}")


def _on_correct(
    agent: Agent, spec: AgentSpec, cmd: Command, ctx: Ctx
) -> tuple[Agent, list[Action]]:
    """A drift correction: fleetd restarts a running agent with its declared config.

    Unlike an operator restart it keeps the restart history, so it counts towards
    backoff and the intensity limit. With the limit reached it is skipped (the
    drift alert stays open for an operator) rather than parking a running agent
    in FATAL.
    """
    st = agent.state
    if st not in lifecycle.LIVE_STATES:
        return agent, []
    if agent.started_at is not None and agent.started_at >= cmd.received:
        return agent, []  # restarted since the drift was seen
    why = cmd.reason or "drift correction"
    recent = tuple(t for t in agent.restarts if ctx.now - t < spec.intensity.window)
    if len(recent) >= spec.intensity.max_restarts:
        return agent, [
            Emit(
                "drift_correction_skipped",
                f"{agent.name} not restarted ({why}): {len(recent)} restarts within "
                f"{spec.intensity.window:g}s already",
                fields=_fields(agent, cause=why),
            )
        ]
    actions: list[Action] = [
        Emit("agent_restart_requested", f"{agent.name} restarted: {why}", fields=_fields(agent)),
        CaptureForensics(why),
        Kill(why, agent.pid),
    ]
    agent, more = _restart_or_park(agent, spec, ctx, why)
    return agent, [*actions, *more]


def _on_alive(
    agent: Agent, spec: AgentSpec, inp: PaneAlive, ctx: Ctx
) -> tuple[Agent, list[Action]]:
    st = agent.state
    if st in (S.UNKNOWN, S.BACKOFF):
        agent = _move(
            agent,
            S.RUNNING,
            ctx.now,
            pid=inp.pid,
            started_at=ctx.now,
            retry_at=None,
            reason="adopted",
        )
        actions: list[Action] = [
            Emit(
                "agent_adopted",
                f"{agent.name} is running (pid {inp.pid}); fleetd adopted it without restarting",
                fields=_fields(agent, pid=inp.pid),
            )
        ]
        if spec.heartbeat_file is None or (
            agent.last_beat_at is not None and agent.last_beat_at + spec.staleness > ctx.now
        ):
            agent, rec = _recover(agent, spec, ctx.now)
            actions += rec
        return agent, actions
    if st in (S.STARTING, S.RUNNING, S.HUNG) and agent.pid is not None and inp.pid != agent.pid:
        # The pane runs a process we did not start (someone respawned it by hand).
        return replace(agent, pid=inp.pid), []
    return agent, []


def _on_beat(agent: Agent, spec: AgentSpec, beat: Beat, ctx: Ctx) -> tuple[Agent, list[Action]]:
    if beat.ts_wall == agent.last_beat_wall:
        return agent, []  # same beat as before: it proves nothing new
    actions: list[Action] = []
    if beat.busy is not None and beat.busy != agent.busy:
        # Busy/idle changes are events (not every beat is): history computes utilization.
        actions.append(
            Emit(
                "agent_busy" if beat.busy else "agent_idle",
                f"{agent.name} is {'busy' if beat.busy else 'idle'}",
                fields={"busy": beat.busy, "state": str(agent.state)},
            )
        )
    agent = replace(
        agent,
        last_beat_wall=beat.ts_wall,
        last_beat_at=beat.at,
        beat_status=beat.status,
        busy=beat.busy,
    )
    fresh_for_this_run = agent.started_at is not None and beat.at >= agent.started_at - BEAT_SKEW
    if agent.state is S.STARTING and agent.pid is not None and fresh_for_this_run:
        agent = _move(agent, S.RUNNING, ctx.now, reason="heartbeat")
        actions.append(
            Emit(
                "agent_running", f"{agent.name} is running (first heartbeat)", fields=_fields(agent)
            )
        )
        agent, rec = _recover(agent, spec, ctx.now)
        actions += rec
    return agent, actions


def _on_tick(agent: Agent, spec: AgentSpec, ctx: Ctx) -> tuple[Agent, list[Action]]:
    now = ctx.now
    if agent.state is S.HUNG and agent.retry_at is not None and now >= agent.retry_at:
        # Still HUNG long after the kill: the kill did not happen (or did not work).
        agent = replace(agent, retry_at=now + spec.stop_timeout + HUNG_KILL_RETRY)
        return agent, [Kill("hung (kill retried)", agent.pid)]
    if agent.state is S.BACKOFF and agent.retry_at is not None and now >= agent.retry_at:
        agent = _move(
            agent,
            S.STARTING,
            now,
            restarts=(*agent.restarts, now),
            retry_at=None,
            started_at=now,
            pid=None,
        )
        return agent, [Spawn(agent.reason or "backoff elapsed")]
    if agent.state not in (S.STARTING, S.RUNNING) or agent.pid is None:
        return agent, []
    recovered: list[Action] = []
    if agent.state is S.RUNNING and agent.incident is not None:
        agent, recovered = _recover(agent, spec, now)
    if spec.heartbeat_file is None:
        if (
            agent.state is S.STARTING
            and agent.started_at is not None
            and (now >= agent.started_at + SETTLE_WITHOUT_HEARTBEAT)
        ):
            agent = _move(agent, S.RUNNING, now, reason="stayed up")
            agent, rec = _recover(agent, spec, now)
            return agent, [
                Emit("agent_running", f"{agent.name} is running", fields=_fields(agent)),
                *rec,
            ]
        return agent, recovered
    deadline = beat_deadline(agent, spec)
    if deadline is None or now < deadline:
        return agent, recovered
    age = None if agent.last_beat_at is None else round(now - agent.last_beat_at, 3)
    agent, opened = _open_incident(agent, ctx)
    # If the kill fails (host trouble), the core asks for it again at retry_at.
    agent = _move(
        agent,
        S.HUNG,
        now,
        reason="heartbeat stale",
        retry_at=now + spec.stop_timeout + HUNG_KILL_RETRY,
    )
    why = (
        "no heartbeat since it started"
        if age is None
        or agent.last_beat_at is None
        or agent.started_at is None
        or agent.last_beat_at < agent.started_at - BEAT_SKEW
        else f"last heartbeat {age:.1f}s ago"
    )
    return agent, [
        Emit(
            "agent_hung",
            f"{agent.name} is hung: {why} (deadline {spec.staleness:g}s)",
            alert=opened,
            fields=_fields(agent, heartbeat_age=age),
        ),
        CaptureForensics("hung: " + why),
        Kill("hung", agent.pid),
    ]


def decide(agent: Agent, spec: AgentSpec, inp: Input, ctx: Ctx) -> tuple[Agent, list[Action]]:
    """Return the agent's next state and the actions the shell must carry out, in order."""
    if isinstance(inp, Command):
        return _on_command(agent, spec, inp, ctx)
    if agent.state is S.PAUSED:
        # Paused agents are observed (for ps) but never acted on or alerted on.
        if isinstance(inp, Beat) and inp.ts_wall != agent.last_beat_wall:
            return replace(
                agent,
                last_beat_wall=inp.ts_wall,
                last_beat_at=inp.at,
                beat_status=inp.status,
                busy=inp.busy,
            ), []
        if isinstance(inp, PaneAlive):
            return replace(agent, pid=inp.pid), []
        return agent, []
    if isinstance(inp, Tick):
        return _on_tick(agent, spec, ctx)
    if isinstance(inp, Beat):
        return _on_beat(agent, spec, inp, ctx)
    if isinstance(inp, PaneAlive):
        return _on_alive(agent, spec, inp, ctx)
    if isinstance(inp, PaneDead | PaneMissing):
        if agent.state in (S.STOPPED, S.FATAL, S.BACKOFF):
            return agent, []
        if agent.state is S.STARTING and agent.pid is None:
            return agent, []  # spawn in flight: this is the previous incarnation
        if isinstance(inp, PaneDead) and agent.pid is not None and inp.pid not in (None, agent.pid):
            return agent, []  # an older incarnation's death
        if (
            agent.state is S.UNKNOWN
            and isinstance(inp, PaneMissing)
            and agent.started_at is None
            and agent.incident is None
            and inp.host_incident is None
        ):
            # First sight of an agent that is not running: start it, nothing failed.
            agent = _move(
                agent, S.STARTING, ctx.now, started_at=ctx.now, pid=None, reason=FIRST_START
            )
            return agent, [Spawn(FIRST_START)]
        return _on_death(agent, spec, inp, ctx)
    if isinstance(inp, SpawnDone):
        if agent.state is not S.STARTING:
            return agent, []
        # The run starts when the process exists: deadlines and the coalescing of
        # operator restarts (a request received before this moment is satisfied
        # by this run) are measured from here.
        agent = replace(agent, pid=inp.pid, started_at=ctx.now)
        return agent, [
            Emit(
                "agent_started",
                f"{agent.name} started (pid {inp.pid}): {agent.reason}",
                fields=_fields(agent, pid=inp.pid, cause=agent.reason),
            )
        ]
    if isinstance(inp, SpawnFailed):
        if agent.state is not S.STARTING:
            return agent, []
        agent, opened = _open_incident(agent, ctx)
        emit = Emit(
            "agent_spawn_failed",
            f"{agent.name} could not be started: {inp.reason}",
            alert=opened,
            fields=_fields(agent, cause=inp.reason),
        )
        agent, more = _restart_or_park(agent, spec, ctx, "spawn failed")
        return agent, [emit, *more]
    if isinstance(inp, HostDown):
        if agent.state in (S.STOPPED, S.FATAL, S.UNKNOWN):
            return agent, []
        agent = _move(agent, S.UNKNOWN, ctx.now, retry_at=None, reason=inp.reason)
        return agent, [
            Emit(
                "agent_unknown",
                f"{agent.name} is UNKNOWN: {inp.reason}",
                fields=_fields(agent, cause=inp.reason),
            )
        ]
    raise TypeError(f"unhandled input {inp!r}")
