"""Drift: does the agent really run what the roster declares? Pure.

An agent can end up on the wrong model or runtime without dying: someone typed
``/model`` in the pane, a wrapper picked a default, an operator started a
different program in the window, fleetd adopted an agent it did not start. This
module compares what the agent and the system report with the roster and turns a
mismatch into one incident.

Sources and fields (each comparison is a ``field@source`` key):

* heartbeat (``fleetd.heartbeat.Heartbeat``): ``runtime`` vs ``AgentSpec.runtime``,
  ``model`` vs the declared model, ``provider`` vs the active provider's name;
* process command line (psutil): ``model`` from ``--model X`` / ``--model=X`` vs
  the declared model; ``command``: the declared program (first word of the
  roster command) must be ``argv[0]`` or, for an interpreter, ``argv[1]``;
* tmux ``pane_current_command``: ``command`` drifts only when the pane shows a
  shell although the roster command is not a shell (the agent left the pane to
  a prompt, or someone typed into it). Other names are ambiguous (``node`` runs
  ``claude``), so they are not judged.

The declared model is the active provider's ``model`` if it has one, else
``AgentSpec.model`` (the same rule as ``fleetd.render``). Models compare
case-insensitively, ignoring a ``vendor/`` prefix on either side, and a reported
model may add a dated or tagged suffix (``claude-sonnet-4-5-20250929`` matches
``claude-sonnet-4-5``). Anything not reported, or not declared, is unknown and
never a mismatch; and unknown does not clear a drift seen earlier (see
:func:`drift_step`), so a restarting agent that has not beaten yet does not
reopen the same incident and cause a correction loop.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetd.config import AgentSpec, ProviderSpec
from fleetd.heartbeat import Heartbeat

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "fish", "ksh", "csh", "tcsh", "ash", "busybox"})
_WRAPPERS = frozenset({"env", "exec", "nohup", "stdbuf", "nice", "setsid"})

Source = Literal["heartbeat", "cmdline", "pane"]


@dataclass(frozen=True, slots=True)
class Mismatch:
    field: str  # runtime | model | provider | command
    declared: str
    actual: str
    source: Source = "heartbeat"

    @property
    def key(self) -> str:
        return f"{self.field}@{self.source}"

    def as_dict(self) -> dict[str, str]:
        return {
            "field": self.field,
            "declared": self.declared,
            "actual": self.actual,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class DriftEvent:
    kind: Literal["drift_detected", "drift_cleared"]
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    alert: bool = False


def declared_model(spec: AgentSpec, active_provider: ProviderSpec | None) -> str | None:
    if active_provider is not None and active_provider.model:
        return active_provider.model
    return spec.model


def declared_program(command: tuple[str, ...] | str) -> str | None:
    """Basename of the program the roster command starts (skipping env/exec wrappers)."""
    if isinstance(command, str):
        try:
            words = shlex.split(command)
        except ValueError:
            return None
    else:
        words = list(command)
    for w in words:
        if "=" in w.split("/")[0] and not w.startswith(("-", "/", ".")):
            continue  # VAR=value prefix
        base = os.path.basename(w)
        if base in _WRAPPERS or w.startswith("-"):
            continue
        # Placeholders cannot be judged before rendering.
        return None if "{" in base else base or None
    return None


def _norm_model(m: str) -> str:
    m = m.strip().casefold()
    return m.rsplit("/", 1)[-1]


def same_model(declared: str, actual: str) -> bool:
    d, a = _norm_model(declared), _norm_model(actual)
    return a == d or (a.startswith(d) and a[len(d)] in "-@:")


def cmdline_model(cmdline: Sequence[str]) -> str | None:
    for i, arg in enumerate(cmdline):
        if arg == "--model" and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return None


def _compare(
    spec: AgentSpec,
    active_provider: ProviderSpec | None,
    hb: Heartbeat | None,
    pane_command: str | None,
    cmdline: Sequence[str] | None,
) -> tuple[set[str], list[Mismatch]]:
    observed: set[str] = set()
    out: list[Mismatch] = []
    model = declared_model(spec, active_provider)

    def check(fld: str, src: Source, declared: str | None, actual: str | None, same: bool) -> None:
        if declared is None or actual is None:
            return
        observed.add(f"{fld}@{src}")
        if not same:
            out.append(Mismatch(fld, declared, actual, src))

    if hb is not None:
        if spec.runtime is not None and hb.runtime is not None:
            same = hb.runtime.casefold() == spec.runtime.casefold()
            check("runtime", "heartbeat", spec.runtime, hb.runtime, same)
        if model is not None and hb.model is not None:
            check("model", "heartbeat", model, hb.model, same_model(model, hb.model))
        if active_provider is not None and hb.provider is not None:
            same = hb.provider.casefold() == active_provider.name.casefold()
            check("provider", "heartbeat", active_provider.name, hb.provider, same)

    program = declared_program(spec.command)
    if cmdline:
        argv_model = cmdline_model(cmdline)
        if model is not None and argv_model is not None:
            check("model", "cmdline", model, argv_model, same_model(model, argv_model))
        first = os.path.basename(cmdline[0])
        # A shell running the command (sh -c '...' that did not exec) says nothing.
        if program is not None and program not in SHELLS and first not in SHELLS:
            names = {os.path.basename(a) for a in cmdline[:2]}
            check("command", "cmdline", program, " ".join(cmdline[:2]), program in names)
    if pane_command and program is not None and program not in SHELLS:
        pane = os.path.basename(pane_command.strip())
        if pane in SHELLS:
            check("command", "pane", program, pane, False)
        else:
            observed.add("command@pane")
    return observed, out


def detect(
    spec: AgentSpec,
    active_provider: ProviderSpec | None,
    hb: Heartbeat | None,
    pane_command: str | None,
    cmdline: Sequence[str] | None,
) -> tuple[Mismatch, ...]:
    """All mismatches between the roster and the reports; unknowns are not mismatches.

    Pass ``hb`` only if it is fresh and from the agent's current pid, and
    ``cmdline`` of the pane's process; None for anything not known this cycle.
    """
    return tuple(_compare(spec, active_provider, hb, pane_command, cmdline)[1])


def observed(
    spec: AgentSpec,
    active_provider: ProviderSpec | None,
    hb: Heartbeat | None,
    pane_command: str | None,
    cmdline: Sequence[str] | None,
) -> frozenset[str]:
    """The ``field@source`` keys that could be compared this cycle (for :func:`drift_step`)."""
    return frozenset(_compare(spec, active_provider, hb, pane_command, cmdline)[0])


def _describe(ms: Sequence[Mismatch]) -> str:
    return "; ".join(
        f"{m.field} is {m.actual!r} ({m.source}), roster says {m.declared!r}" for m in ms
    )


def drift_step(
    prev: tuple[Mismatch, ...],
    now_mismatches: tuple[Mismatch, ...],
    mode: Literal["off", "alert", "correct"],
    *,
    seen: Collection[str] | None = None,
    agent: str = "agent",
) -> tuple[list[DriftEvent], bool, tuple[Mismatch, ...]]:
    """Advance one agent's drift incident. Returns ``(events, correct_needed, state)``.

    ``prev`` is the state returned last time (``()`` at first). ``seen`` is
    :func:`observed` for this cycle: a previous mismatch whose key was not
    observed now is carried over (unknown is not "fixed"); None means every
    previous key was observed. ``state`` is what to pass as ``prev`` next time.

    * mismatches appear or change -> ONE ``drift_detected`` (``alert=True`` when the
      incident opens, False when an open incident changes), and in mode
      ``correct`` ``correct_needed=True`` — once per appearance/change, never per
      cycle, so a correction that does not help is not repeated forever;
    * the same mismatches again -> nothing;
    * none left -> ONE ``drift_cleared``.

    Mode ``off`` returns no events, no correction and an empty state.
    """
    if mode == "off":
        return [], False, ()
    current = set(now_mismatches)
    if seen is not None:
        now_keys = {m.key for m in now_mismatches}
        current |= {m for m in prev if m.key not in seen and m.key not in now_keys}
    state = tuple(sorted(current, key=lambda m: (m.field, m.source, m.declared, m.actual)))
    if set(prev) == current:
        return [], False, state
    if not current:
        msg = f"{agent} runs what the roster declares again"
        ev = DriftEvent("drift_cleared", msg, {"cleared": [m.as_dict() for m in prev]})
        return [ev], False, state
    opened = not prev
    action = " (fleetd will restart it as declared)" if mode == "correct" else ""
    msg = f"{agent} drifted from the roster: {_describe(state)}{action}"
    fields = {"mismatches": [m.as_dict() for m in state], "mode": mode, "update": not opened}
    return [DriftEvent("drift_detected", msg, fields, alert=opened)], mode == "correct", state
