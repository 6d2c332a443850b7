"""The agent lifecycle as a table. Everything that decides which state may follow
which lives here; ``policy`` decides *when* to move, this module only says
*whether* a move is legal. An illegal move raises :class:`IllegalTransition`:
it is always a bug in the caller, never an operator mistake.
"""

from __future__ import annotations

from fleetd.errors import IllegalTransition
from fleetd.model import State

S = State

TRANSITIONS: dict[State, frozenset[State]] = {
    # Not observed yet (fleetd just started, or the host came back): adopt what runs.
    S.UNKNOWN: frozenset({S.RUNNING, S.STARTING, S.BACKOFF, S.STOPPED, S.FATAL, S.PAUSED}),
    S.STARTING: frozenset(
        {S.RUNNING, S.STARTING, S.BACKOFF, S.HUNG, S.STOPPED, S.FATAL, S.PAUSED, S.UNKNOWN}
    ),
    S.RUNNING: frozenset({S.STARTING, S.BACKOFF, S.HUNG, S.STOPPED, S.FATAL, S.PAUSED, S.UNKNOWN}),
    # A hung agent is being killed; its death then leads to a restart or a stop.
    S.HUNG: frozenset({S.STARTING, S.BACKOFF, S.STOPPED, S.FATAL, S.PAUSED, S.UNKNOWN}),
    # RUNNING: a live pane found while waiting to restart is adopted, not doubled.
    S.BACKOFF: frozenset({S.STARTING, S.RUNNING, S.STOPPED, S.FATAL, S.PAUSED, S.UNKNOWN}),
    S.STOPPED: frozenset({S.STARTING, S.PAUSED, S.UNKNOWN}),
    S.FATAL: frozenset({S.STARTING, S.STOPPED, S.PAUSED}),
    # Resume hands the agent back to observation, which adopts whatever runs.
    S.PAUSED: frozenset({S.UNKNOWN, S.STOPPED}),
}

# States in which fleetd expects a live process in the pane.
LIVE_STATES = frozenset({S.STARTING, S.RUNNING, S.HUNG})
# States in which an operator hold stops automatic action.
HELD_STATES = frozenset({S.STOPPED, S.PAUSED, S.FATAL})


def check(src: State, dst: State) -> None:
    """Raise IllegalTransition unless ``src -> dst`` is in the table."""
    if dst not in TRANSITIONS[src]:
        raise IllegalTransition(f"illegal transition {src} -> {dst}", src=src, dst=dst)


def can(src: State, dst: State) -> bool:
    return dst in TRANSITIONS[src]
