"""The lifecycle table: complete, and strict about what it does not allow."""

from __future__ import annotations

import itertools

import pytest

from fleetd import lifecycle
from fleetd.errors import AgentError, FleetError, IllegalTransition
from fleetd.model import State

S = State


def test_every_state_has_an_entry_and_targets_are_states() -> None:
    assert set(lifecycle.TRANSITIONS) == set(State)
    for src, targets in lifecycle.TRANSITIONS.items():
        assert targets, src
        assert targets <= set(State), src


def test_every_state_is_reachable_and_every_state_can_be_left() -> None:
    reachable = set().union(*lifecycle.TRANSITIONS.values())
    assert reachable == set(State)
    # Even a parked or held agent can be handed back to an operator.
    for src in State:
        assert lifecycle.TRANSITIONS[src] - {src}, src


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(State, State)))
def test_check_agrees_with_table(src: State, dst: State) -> None:
    allowed = dst in lifecycle.TRANSITIONS[src]
    assert lifecycle.can(src, dst) is allowed
    if allowed:
        lifecycle.check(src, dst)
    else:
        with pytest.raises(IllegalTransition) as info:
            lifecycle.check(src, dst)
        err = info.value
        assert err.code == "agent.illegal_transition"
        assert err.details == {"src": src, "dst": dst}
        assert str(src) in err.message and str(dst) in err.message
        assert isinstance(err, AgentError) and isinstance(err, FleetError)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (S.PAUSED, S.RUNNING),  # resume goes through observation, never straight to RUNNING
        (S.PAUSED, S.STARTING),
        (S.FATAL, S.RUNNING),
        (S.STOPPED, S.RUNNING),
        (S.STOPPED, S.HUNG),
        (S.UNKNOWN, S.HUNG),  # no deadline while the host cannot be seen
        (S.BACKOFF, S.HUNG),
        (S.HUNG, S.RUNNING),  # a hung agent is killed, never revived
        (S.FATAL, S.UNKNOWN),
    ],
)
def test_known_illegal_moves(src: State, dst: State) -> None:
    with pytest.raises(IllegalTransition):
        lifecycle.check(src, dst)


def test_state_groups() -> None:
    assert lifecycle.LIVE_STATES == {S.STARTING, S.RUNNING, S.HUNG}
    assert lifecycle.HELD_STATES == {S.STOPPED, S.PAUSED, S.FATAL}
    assert not lifecycle.LIVE_STATES & lifecycle.HELD_STATES
