"""The pure decision core: restart policy, backoff, intensity, hangs, incidents,
operator commands and the lifecycle invariants, all with plain numbers for time.

Specs are built through ``config.parse_roster`` so that the roster's defaults and
duration parsing apply exactly as they do for a real roster file.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from fleetd import lifecycle
from fleetd.config import AgentSpec, parse_roster
from fleetd.errors import IllegalTransition, InvalidCommand
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
from fleetd.policy import (
    Agent,
    backoff_delay,
    beat_deadline,
    decide,
    next_wake,
    should_restart,
)

S = State
WALL0 = 1_764_000_000.0  # any wall-clock epoch; only equality of ts_wall matters here

# staleness = 10 s * 3 = 30 s; start grace 60 s; recovery settle 20 s;
# backoff 2 s * 2^(n-1) capped at 30 s without jitter; FATAL after 3 restarts in 5 min.
BASE_AGENT: dict[str, Any] = {
    "command": ["agent-cli", "--model", "{model}"],
    "heartbeat_file": "/tmp/fleetd-hb/{agent}",
    "heartbeat_interval": "10s",
    "staleness_factor": 3,
    "start_grace": "1m",
    "recovery_settle": "20s",
    "backoff": {"initial": "2s", "factor": 2, "cap": "30s", "jitter": 0},
    "intensity": {"max_restarts": 3, "window": "5m"},
}


def make_spec(**overrides: Any) -> AgentSpec:
    body = {**BASE_AGENT, **overrides}
    return parse_roster({"agents": {"coder": body}}).agents["coder"]


def label(action: Action) -> str:
    if isinstance(action, Emit):
        return f"emit:{action.kind}"
    return type(action).__name__


def labels(actions: list[Action]) -> list[str]:
    return [label(a) for a in actions]


def emits(actions: list[Action], kind: str) -> list[Emit]:
    return [a for a in actions if isinstance(a, Emit) and a.kind == kind]


class Run:
    """Feeds inputs to decide() and keeps the agent, as the shell's worker does."""

    def __init__(self, spec: AgentSpec, agent: Agent | None = None) -> None:
        self.spec = spec
        self.agent = agent or Agent("coder")
        self._ids = itertools.count(1)
        self.wall = WALL0

    def feed(self, inp: Input, now: float, rand: float = 0.5) -> list[Action]:
        ctx = Ctx(now=now, rand=rand, new_id=f"inc-{next(self._ids)}")
        self.agent, actions = decide(self.agent, self.spec, inp, ctx)
        return actions

    def state(self) -> State:
        # A call, so that mypy does not keep a narrowed state across feed() calls.
        return self.agent.state

    def beat(self, now: float) -> list[Action]:
        """A fresh heartbeat written at ``now`` (a new ts each time)."""
        self.wall += 1.0
        return self.feed(Beat(ts_wall=self.wall, at=now, status="working"), now)

    def start(self, now: float, pid: int = 7, *, beat: bool = True) -> None:
        """First sight of a missing agent: spawn it, then (optionally) its first beat."""
        assert labels(self.feed(PaneMissing(), now)) == ["Spawn"]
        self.feed(SpawnDone(pid), now)
        if beat:
            self.beat(now)
            assert self.agent.state is S.RUNNING


# --- restart policy per exit status --------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "exit_status", "signal", "expected"),
    [
        ("always", 0, None, True),
        ("always", 1, None, True),
        ("always", None, 9, True),
        ("on-failure", 0, None, False),
        ("on-failure", 1, None, True),
        ("on-failure", 137, None, True),
        ("on-failure", None, 9, True),
        ("on-failure", 0, 15, True),
        ("never", 0, None, False),
        ("never", 1, None, False),
        ("never", None, 9, False),
    ],
)
def test_should_restart(
    policy: str, exit_status: int | None, signal: int | None, expected: bool
) -> None:
    assert should_restart(make_spec(restart=policy), exit_status, signal) is expected


@pytest.mark.parametrize(
    ("policy", "exit_status", "signal", "state"),
    [
        ("always", 0, None, S.STARTING),
        ("on-failure", 0, None, S.STOPPED),
        ("on-failure", 3, None, S.STARTING),
        ("on-failure", None, 11, S.STARTING),
        ("never", 0, None, S.STOPPED),
        ("never", 2, None, S.STOPPED),
    ],
)
def test_death_follows_restart_policy(
    policy: str, exit_status: int | None, signal: int | None, state: State
) -> None:
    run = Run(make_spec(restart=policy))
    run.start(100.0)
    actions = run.feed(PaneDead(7, exit_status, signal), 110.0)
    assert run.state() is state
    spawns = [a for a in actions if isinstance(a, Spawn)]
    if state is S.STOPPED:
        assert spawns == []
        assert emits(actions, "agent_exited")
        assert run.agent.pid is None
    else:
        # The first restart after a quiet period is immediate.
        assert len(spawns) == 1
        assert run.agent.started_at == 110.0
    # Forensics are taken for every death, restarted or not.
    assert labels(actions)[0] == "CaptureForensics"


# --- backoff ------------------------------------------------------------------------


def test_backoff_delay_grows_geometrically_and_caps() -> None:
    spec = make_spec()  # initial 2 s, factor 2, cap 30 s, no jitter
    expected = {0: 0.0, 1: 2.0, 2: 4.0, 3: 8.0, 4: 16.0, 5: 30.0, 6: 30.0, 20: 30.0}
    for n, delay in expected.items():
        assert backoff_delay(spec, n, 0.5) == delay, n
        assert backoff_delay(spec, n, 0.0) == delay, n


def test_backoff_jitter_bounds_are_exact() -> None:
    spec = make_spec(backoff={"initial": "1s", "factor": 3, "cap": "20s", "jitter": 0.25})
    almost_one = math.nextafter(1.0, 0.0)
    rng = random.Random(1234)
    for n in range(1, 8):
        base = min(20.0, 1.0 * 3.0 ** (n - 1))
        lo, hi = base * 0.75, base * 1.25
        assert backoff_delay(spec, n, 0.0) == pytest.approx(lo, rel=1e-12)
        assert backoff_delay(spec, n, 0.5) == pytest.approx(base, rel=1e-12)
        top = backoff_delay(spec, n, almost_one)
        assert top == pytest.approx(hi, rel=1e-9)
        assert top <= hi
        for _ in range(200):
            assert lo <= backoff_delay(spec, n, rng.random()) <= hi
    # A quiet agent restarts at once whatever the jitter.
    assert backoff_delay(spec, 0, almost_one) == 0.0


def test_first_restart_immediate_then_backoff_through_decide() -> None:
    run = Run(make_spec())
    run.start(100.0)

    first = run.feed(PaneDead(7, 1, None), 1000.0)
    assert labels(first) == ["CaptureForensics", "emit:agent_dead", "Spawn"]
    assert run.state() is S.STARTING
    run.feed(SpawnDone(8), 1000.0)

    second = run.feed(PaneDead(8, 1, None), 1001.0)
    assert run.state() is S.BACKOFF
    assert "Spawn" not in labels(second)
    assert emits(second, "agent_backoff")[0].fields["delay"] == 2.0
    assert run.agent.retry_at == 1003.0
    assert next_wake(run.agent, run.spec) == 1003.0
    assert run.feed(Tick(), 1002.999) == []
    assert run.state() is S.BACKOFF
    assert labels(run.feed(Tick(), 1003.0)) == ["Spawn"]
    assert run.state() is S.STARTING
    run.feed(SpawnDone(9), 1003.0)

    run.feed(PaneDead(9, 1, None), 1004.0)
    assert run.state() is S.BACKOFF
    assert run.agent.retry_at == 1004.0 + 4.0  # initial * factor**(2-1)


# --- restart intensity ----------------------------------------------------------------


def test_intensity_limit_parks_agent_in_fatal_with_one_alert() -> None:
    run = Run(make_spec())
    run.start(100.0)
    now, pid = 200.0, 7
    all_actions: list[Action] = []
    spawns = 0
    for _ in range(20):  # bounded: FATAL must come long before
        now += 1.0
        actions = run.feed(PaneDead(pid, 1, None), now)
        all_actions += actions
        if run.state() is S.FATAL:
            break
        if run.state() is S.BACKOFF:
            assert run.agent.retry_at is not None
            now = run.agent.retry_at
            actions = run.feed(Tick(), now)
            all_actions += actions
        assert run.state() is S.STARTING
        spawns += labels(actions).count("Spawn")
        pid += 1
        run.feed(SpawnDone(pid), now)
    assert run.state() is S.FATAL
    assert spawns == 3  # max_restarts automatic restarts, then FATAL
    fatal = emits(all_actions, "agent_fatal")
    assert len(fatal) == 1
    assert fatal[0].alert is True
    assert "Spawn" not in labels(actions)
    # Parked: nothing more happens on its own.
    assert next_wake(run.agent, run.spec) is None
    for inp in (PaneDead(pid, 1, None), PaneMissing(), Tick()):
        assert run.feed(inp, now + 1000.0) == []
    assert run.state() is S.FATAL


def test_restarts_outside_window_do_not_count() -> None:
    spec = make_spec()  # 3 restarts within 300 s
    old = Agent(
        "coder", state=S.RUNNING, since=0.0, started_at=0.0, pid=7, restarts=(0.0, 10.0, 20.0)
    )

    run = Run(spec, old)
    run.feed(PaneDead(7, 1, None), 250.0)  # all three inside the window
    assert run.state() is S.FATAL

    run = Run(spec, old)
    actions = run.feed(PaneDead(7, 1, None), 1000.0)  # all three long forgotten
    assert run.state() is S.STARTING
    assert labels(actions)[-1] == "Spawn"  # a quiet period again: immediate
    assert run.agent.restarts == (1000.0,)

    run = Run(spec, old)
    run.feed(PaneDead(7, 1, None), 305.0)  # the restart at 0 s has left the window
    assert run.state() is S.BACKOFF
    assert run.agent.retry_at == 305.0 + 4.0  # two restarts in the window


# --- start grace and the heartbeat deadline --------------------------------------------


def test_no_hung_before_start_grace_without_any_beat() -> None:
    run = Run(make_spec())
    run.start(100.0, beat=False)
    assert run.state() is S.STARTING
    assert beat_deadline(run.agent, run.spec) == 160.0
    assert next_wake(run.agent, run.spec) == 160.0
    for t in (101.0, 130.0, 159.0, 159.999):
        assert run.feed(Tick(), t) == []
        assert run.state() is S.STARTING
    actions = run.feed(Tick(), 160.0)
    assert run.state() is S.HUNG
    assert "no heartbeat since it started" in emits(actions, "agent_hung")[0].message


@pytest.mark.parametrize(
    ("beat_at", "deadline"),
    [
        (110.0, 160.0),  # inside the grace: the grace wins
        (130.0, 160.0),  # beat + staleness == grace end
        (150.0, 180.0),  # beat + staleness wins
        (400.0, 430.0),
    ],
)
def test_hung_exactly_at_deadline_not_before(beat_at: float, deadline: float) -> None:
    run = Run(make_spec())
    run.start(100.0, beat=False)
    run.beat(beat_at)
    assert run.state() is S.RUNNING
    assert beat_deadline(run.agent, run.spec) == deadline
    assert next_wake(run.agent, run.spec) == deadline
    assert run.feed(Tick(), deadline - 0.001) == []
    assert run.state() is S.RUNNING
    run.feed(Tick(), deadline)
    assert run.state() is S.HUNG


def test_hung_emits_then_captures_then_kills() -> None:
    run = Run(make_spec())
    run.start(100.0)
    actions = run.feed(Tick(), 160.0)
    assert labels(actions) == ["emit:agent_hung", "CaptureForensics", "Kill"]
    hung, forensics, kill = actions
    assert isinstance(hung, Emit) and hung.alert is True
    assert isinstance(forensics, CaptureForensics) and forensics.reason.startswith("hung")
    assert isinstance(kill, Kill) and kill.pid == 7
    assert run.agent.incident is not None


def test_hung_agent_whose_kill_failed_gets_the_kill_again() -> None:
    # The kill may fail (host trouble); the agent must not stay HUNG forever.
    spec = make_spec()
    run = Run(spec)
    run.start(100.0)
    run.feed(Tick(), 160.0)
    assert run.state() is S.HUNG
    retry = next_wake(run.agent, spec)
    assert retry is not None and retry == 160.0 + spec.stop_timeout + 10.0
    assert run.feed(Tick(), retry - 0.1) == []
    again = run.feed(Tick(), retry)
    assert labels(again) == ["Kill"]
    assert run.state() is S.HUNG and next_wake(run.agent, spec) == retry + spec.stop_timeout + 10.0
    # when the process finally dies, the usual restart follows
    assert labels(run.feed(PaneDead(7, None, 9), retry + 1)) == ["emit:agent_killed", "Spawn"]


def test_death_while_hung_restarts_without_second_forensics() -> None:
    run = Run(make_spec())
    run.start(100.0)
    run.feed(Tick(), 160.0)
    assert run.state() is S.HUNG
    actions = run.feed(PaneDead(7, None, 15), 161.0)
    assert labels(actions) == ["emit:agent_killed", "Spawn"]
    assert run.state() is S.STARTING
    assert not any(isinstance(a, Emit) and a.alert for a in actions)


def test_death_while_hung_with_restart_never_stops() -> None:
    run = Run(make_spec(restart="never"))
    run.start(100.0)
    run.feed(Tick(), 160.0)
    actions = run.feed(PaneDead(7, None, 15), 161.0)
    assert "Spawn" not in labels(actions)
    assert "CaptureForensics" not in labels(actions)
    assert run.state() is S.STOPPED


def test_forensics_always_precede_spawn() -> None:
    cases: list[tuple[Input, float]] = [
        (PaneDead(7, 1, None), 120.0),
        (PaneDead(7, None, 9), 120.0),
        (PaneMissing(), 120.0),
        (PaneMissing(host_incident="local-tmux-1"), 120.0),
        (Command("restart", 119.0), 120.0),
    ]
    for inp, now in cases:
        run = Run(make_spec())
        run.start(100.0)
        got = labels(run.feed(inp, now))
        assert "Spawn" in got, inp
        assert "CaptureForensics" in got, inp
        assert got.index("CaptureForensics") < got.index("Spawn"), (inp, got)


def test_death_of_an_older_pid_is_ignored() -> None:
    run = Run(make_spec())
    run.start(100.0)
    before = run.agent
    assert run.feed(PaneDead(6, 1, None), 120.0) == []
    assert run.agent == before


def test_repeated_beat_with_same_ts_changes_nothing() -> None:
    """A file stuck with one (even future-dated) ts cannot keep an agent alive."""
    run = Run(make_spec())
    run.start(100.0, beat=False)
    future = WALL0 + 10 * 365 * 86400.0
    # The shell clamps a future-dated beat to "now".
    run.feed(Beat(ts_wall=future, at=110.0), 110.0)
    assert run.state() is S.RUNNING
    settled = run.agent
    t = 110.0
    for _ in range(20):  # the same file, read again and again, clamped to now each time
        t += 2.5
        assert run.feed(Beat(ts_wall=future, at=t, status="working", busy=True), t) == []
        assert run.agent == settled
    assert t == 160.0
    assert beat_deadline(run.agent, run.spec) == 160.0
    run.feed(Tick(), 160.0)
    assert run.state() is S.HUNG


# --- first sight -------------------------------------------------------------------


def test_first_sight_of_missing_agent_spawns_without_incident() -> None:
    run = Run(make_spec())
    actions = run.feed(PaneMissing(), 5.0)
    assert labels(actions) == ["Spawn"]
    assert run.state() is S.STARTING
    assert run.agent.incident is None
    assert run.agent.restarts == ()


def test_first_sight_of_live_agent_adopts_it() -> None:
    run = Run(make_spec())
    actions = run.feed(PaneAlive(4242), 5.0)
    assert labels(actions) == ["emit:agent_adopted"]
    assert run.state() is S.RUNNING
    assert run.agent.pid == 4242
    assert run.agent.incident is None


# --- incidents ------------------------------------------------------------------------


def test_incident_opens_once_and_closes_after_settle() -> None:
    run = Run(make_spec())
    run.start(100.0)

    died = emits(run.feed(PaneDead(7, 1, None), 120.0), "agent_dead")
    assert len(died) == 1 and died[0].alert is True
    first = run.agent.incident
    assert first is not None
    assert died[0].fields["incident"] == first
    run.feed(SpawnDone(8), 120.0)

    again = emits(run.feed(PaneDead(8, 1, None), 125.0), "agent_dead")
    assert len(again) == 1 and again[0].alert is False
    assert run.agent.incident == first
    assert run.state() is S.BACKOFF
    run.feed(Tick(), 127.0)
    run.feed(SpawnDone(9), 127.0)

    recovered: list[Emit] = []
    run.beat(128.0)  # RUNNING again at 128
    assert run.state() is S.RUNNING
    assert next_wake(run.agent, run.spec) == 148.0  # settle before the beat deadline
    run.beat(140.0)
    recovered += emits(run.feed(Tick(), 147.999), "agent_recovered")
    assert recovered == []
    assert run.agent.incident == first
    recovered += emits(run.feed(Tick(), 148.0), "agent_recovered")
    assert len(recovered) == 1
    assert run.agent.incident is None

    later = emits(run.feed(PaneDead(9, 1, None), 160.0), "agent_dead")
    assert len(later) == 1 and later[0].alert is True
    assert run.agent.incident not in (None, first)


def test_missing_pane_during_host_incident_does_not_alert() -> None:
    run = Run(make_spec())
    run.start(100.0)
    actions = run.feed(PaneMissing(host_incident="local-tmux-gone"), 120.0)
    dead = emits(actions, "agent_dead")
    assert len(dead) == 1
    assert dead[0].alert is False
    assert dead[0].fields["cause"] == "tmux_server_gone"
    assert not any(isinstance(a, Emit) and a.alert for a in actions)
    assert labels(actions)[-1] == "Spawn"


def test_spawn_failure_alerts_once_and_retries() -> None:
    run = Run(make_spec())
    run.feed(PaneMissing(), 100.0)
    first = run.feed(SpawnFailed("tmux: no server"), 100.0)
    failed = emits(first, "agent_spawn_failed")
    assert len(failed) == 1 and failed[0].alert is True
    assert labels(first)[-1] == "Spawn"  # first automatic restart: immediate
    second = run.feed(SpawnFailed("tmux: no server"), 100.5)
    assert emits(second, "agent_spawn_failed")[0].alert is False
    assert run.state() is S.BACKOFF


# --- operator commands -------------------------------------------------------------


def test_restart_command_is_coalesced_with_a_later_start() -> None:
    run = Run(make_spec())
    run.start(200.0)
    before = run.agent
    assert run.feed(Command("restart", received=199.5), 201.0) == []
    assert run.feed(Command("restart", received=200.0), 201.0) == []
    assert run.agent == before
    actions = run.feed(Command("restart", received=201.0, uid=1000), 201.5)
    assert labels(actions) == [
        "emit:agent_restart_requested",
        "CaptureForensics",
        "Kill",
        "Spawn",
    ]
    kill = actions[2]
    assert isinstance(kill, Kill) and kill.pid == 7
    assert run.state() is S.STARTING
    assert run.agent.started_at == 201.5
    assert emits(actions, "agent_restart_requested")[0].fields["uid"] == 1000


def test_restart_from_fatal_starts_again_with_fresh_history() -> None:
    spec = make_spec()
    fatal = Agent("coder", state=S.FATAL, since=50.0, started_at=40.0, restarts=(10.0, 20.0, 30.0))
    run = Run(spec, fatal)
    actions = run.feed(Command("restart", received=60.0), 60.0)
    assert labels(actions) == ["emit:agent_restart_requested", "Spawn"]
    assert run.state() is S.STARTING
    assert run.agent.restarts == ()
    run.feed(SpawnDone(11), 60.0)
    # With the history reset, the next death restarts at once instead of FATAL.
    assert labels(run.feed(PaneDead(11, 1, None), 61.0))[-1] == "Spawn"


def test_stop_kills_and_later_deaths_do_nothing() -> None:
    run = Run(make_spec())
    run.start(100.0)
    actions = run.feed(Command("stop", received=110.0), 110.0)
    assert labels(actions) == ["emit:agent_stopped", "Kill"]
    kill = actions[1]
    assert isinstance(kill, Kill) and kill.pid == 7
    assert run.state() is S.STOPPED
    assert run.feed(PaneDead(7, None, 15), 111.0) == []
    assert run.feed(Tick(), 1000.0) == []
    assert run.state() is S.STOPPED


def test_pause_silences_everything_until_resume() -> None:
    run = Run(make_spec())
    run.start(100.0)
    assert labels(run.feed(Command("pause", received=110.0), 110.0)) == ["emit:agent_paused"]
    assert run.state() is S.PAUSED
    quiet: list[tuple[Input, float]] = [
        (PaneDead(7, 1, None), 111.0),
        (Tick(), 500.0),  # far past every deadline
        (PaneMissing(), 501.0),
        (PaneMissing(host_incident="h-1"), 502.0),
        (HostDown("ssh lost"), 503.0),
        (Tick(), 10_000.0),
    ]
    for inp, now in quiet:
        assert run.feed(inp, now) == [], inp
        assert run.state() is S.PAUSED
    with pytest.raises(InvalidCommand) as info:
        run.feed(Command("start", received=600.0), 600.0)
    assert info.value.code == "agent.invalid_command"
    with pytest.raises(InvalidCommand):
        run.feed(Command("restart", received=600.0), 600.0)
    assert labels(run.feed(Command("resume", received=700.0), 700.0)) == ["emit:agent_resumed"]
    assert run.state() is S.UNKNOWN
    # Back under observation: a missing pane is started like on first sight.
    assert labels(run.feed(PaneMissing(), 701.0)) == ["Spawn"]


# --- host down ------------------------------------------------------------------------


def test_host_down_then_alive_adopts_without_respawn() -> None:
    run = Run(make_spec())
    run.start(100.0)
    assert labels(run.feed(HostDown("ssh: connection lost"), 120.0)) == ["emit:agent_unknown"]
    assert run.state() is S.UNKNOWN
    assert run.feed(Tick(), 10_000.0) == []  # no deadline while we cannot see it
    actions = run.feed(PaneAlive(7), 10_001.0)
    assert "Spawn" not in labels(actions)
    assert run.state() is S.RUNNING
    assert run.agent.pid == 7


def test_host_down_then_dead_restarts_once() -> None:
    run = Run(make_spec())
    run.start(100.0)
    run.feed(HostDown("ssh: connection lost"), 120.0)
    spawns = 0
    spawns += labels(run.feed(PaneDead(7, 1, None), 130.0)).count("Spawn")
    # The same observation again while the spawn is in flight, then after it.
    spawns += labels(run.feed(PaneDead(7, 1, None), 130.1)).count("Spawn")
    run.feed(SpawnDone(8), 130.2)
    spawns += labels(run.feed(PaneDead(7, 1, None), 131.0)).count("Spawn")
    assert spawns == 1
    assert run.agent.pid == 8


# --- next_wake ------------------------------------------------------------------------


def test_next_wake() -> None:
    spec = make_spec()
    backoff = Agent("coder", state=S.BACKOFF, retry_at=42.5, started_at=1.0)
    assert next_wake(backoff, spec) == 42.5
    running = Agent(
        "coder", state=S.RUNNING, since=100.0, started_at=100.0, pid=3, last_beat_at=150.0
    )
    assert next_wake(running, spec) == 180.0 == beat_deadline(running, spec)
    for st in (S.STOPPED, S.FATAL, S.PAUSED, S.UNKNOWN):
        assert next_wake(Agent("coder", state=st, started_at=1.0, pid=3), spec) is None
    no_hb = make_spec(heartbeat_file=None)
    starting = Agent("coder", state=S.STARTING, since=5.0, started_at=5.0, pid=3)
    assert next_wake(starting, no_hb) == 6.0
    assert beat_deadline(starting, no_hb) is None


# --- lifecycle legality under random input --------------------------------------------


@dataclass
class World:
    """What really runs in the pane; observations are drawn from it truthfully."""

    pid: int | None = None
    alive: bool = False
    pane: bool = False
    exit: tuple[int | None, int | None] = (None, None)
    next_pid: int = 1000
    wall: float = WALL0
    old_pids: list[int] = field(default_factory=list)


DEATHS: list[tuple[int | None, int | None]] = [(0, None), (1, None), (None, 9), (137, None)]
VERBS = ["start", "stop", "restart", "pause", "resume"]
EVENTS = [
    "tick",
    "observe",
    "die",
    "pane_gone",
    "stale",
    "beat",
    "stuck_beat",
    "host_down",
    "command",
]
WEIGHTS = [6, 5, 2, 1, 1, 5, 1, 1, 1]


def _random_input(rng: random.Random, world: World, now: float) -> Input:
    event = rng.choices(EVENTS, WEIGHTS)[0]
    if event == "die" and world.alive:
        world.alive = False
        world.exit = rng.choice(DEATHS)
        event = "observe"
    if event == "pane_gone" and world.pane:
        world.pane = world.alive = False
        return PaneMissing(host_incident=rng.choice([None, "host-tmux-gone"]))
    if event == "observe":
        if world.pane and world.alive and world.pid is not None:
            return PaneAlive(world.pid)
        if world.pane:
            return PaneDead(world.pid, *world.exit)
        return PaneMissing()
    if event == "stale" and world.old_pids:
        return PaneDead(rng.choice(world.old_pids), 1, None)
    if event == "beat" and world.alive:
        world.wall += rng.uniform(0.5, 20.0)
        return Beat(
            world.wall, now, rng.choice(["working", "idle"]), rng.choice([True, False, None])
        )
    if event == "stuck_beat":
        return Beat(world.wall, now)
    if event == "host_down":
        return HostDown("unreachable")
    if event == "command":
        return Command(rng.choice(VERBS), received=now - rng.uniform(0.0, 5.0))
    return Tick()


def _check_step(
    before: Agent, after: Agent, inp: Input, actions: list[Action], world: World
) -> None:
    assert after.state is before.state or lifecycle.can(before.state, after.state), (
        before,
        inp,
        after,
    )
    got = labels(actions)
    assert got.count("Spawn") <= 1, got
    if "Spawn" in got and "CaptureForensics" in got:
        assert got.index("CaptureForensics") < got.index("Spawn"), got
    killed = False
    for action in actions:
        if isinstance(action, Kill):
            killed = True
            if action.pid is not None and action.pid == world.pid:
                world.alive = False
                world.exit = (None, 15)
        elif isinstance(action, Spawn):
            # At most one live incarnation: the old one is known dead or killed first.
            assert not (world.alive and not killed), (before, inp, got)
            world.alive = False  # respawn-pane -k


def test_random_inputs_keep_lifecycle_legal_and_one_incarnation() -> None:
    rng = random.Random(20261125)
    transitions = 0
    for seq in range(250):
        spec = make_spec(
            restart=rng.choice(["always", "on-failure", "never"]),
            heartbeat_file=rng.choice([None, "/tmp/fleetd-hb/{agent}"]),
        )
        agent = Agent("coder")
        world = World(pane=rng.random() < 0.5)
        world.alive = world.pane
        world.pid = world.next_pid if world.pane else None
        world.next_pid += 1
        now = 0.0
        pending_spawn = False
        for step in range(80):
            now += rng.uniform(0.0, 15.0)
            inp: Input
            if pending_spawn:
                # The shell runs a Spawn at once and reports how it went.
                if rng.random() < 0.85:
                    if world.pid is not None:
                        world.old_pids.append(world.pid)
                    world.pid, world.alive, world.pane = world.next_pid, True, True
                    world.next_pid += 1
                    inp = SpawnDone(world.pid)
                else:
                    inp = SpawnFailed("tmux refused")
            else:
                inp = _random_input(rng, world, now)
            ctx = Ctx(now=now, rand=rng.random(), new_id=f"inc-{seq}-{step}")
            before = agent
            try:
                agent, actions = decide(agent, spec, inp, ctx)
            except InvalidCommand:
                assert isinstance(inp, Command)
                continue
            except IllegalTransition as exc:  # pragma: no cover - the failure we look for
                pytest.fail(f"seq {seq} step {step}: {before} + {inp}: {exc}")
            pending_spawn = False
            _check_step(before, agent, inp, actions, world)
            if any(isinstance(a, Spawn) for a in actions):
                pending_spawn = True
            transitions += agent.state is not before.state
    assert transitions > 2000  # the walk really moved through the lifecycle


def test_alive_pane_seen_in_backoff_does_not_raise() -> None:
    run = Run(make_spec())
    run.start(100.0)
    run.feed(PaneDead(7, 1, None), 110.0)
    run.feed(SpawnDone(8), 110.0)
    run.feed(PaneDead(8, 1, None), 111.0)
    assert run.state() is S.BACKOFF
    # e.g. an observation taken just before the death, or an operator respawned by hand
    run.feed(PaneAlive(8), 111.5)
    assert run.state() in (S.BACKOFF, S.RUNNING)
