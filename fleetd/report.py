"""Render a :class:`fleetd.history.FleetHistory` for people and for programs.

Markdown for ``fleetctl report`` (and a chat post or a wiki page), JSON for the
control socket and any tool built on it, and the small summary behind
``fleetctl uptime [AGENT]``. Rendering only: every figure comes from
:func:`fleetd.history.compute`, nothing here reads the store or a clock.

The JSON keys are a contract (documented in docs/history.md): add keys, never
rename or remove one; ``version`` changes only on an incompatible change.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fleetd.errors import UnknownAgent
from fleetd.history import AgentHistory, Check, FleetHistory, Incident

JSON_VERSION = 1
SPARK_BELOW = "▁▂▃▄▅▆"  # below target, scaled from 0 to the target
SPARK_AT_TARGET = "▇"
SPARK_FULL = "█"
SPARK_NO_DATA = "·"
SPARK_LEGEND = (
    f"{SPARK_FULL} 100 %, {SPARK_AT_TARGET} at or above target, "
    f"{SPARK_BELOW[0]}-{SPARK_BELOW[-1]} below target (scaled 0 to target), "
    f"{SPARK_NO_DATA} no countable time (fleetd down, agent held or unreachable, or not yet seen)"
)

_GREEN = "\x1b[32m"
_RED = "\x1b[31m"
_BOLD = "\x1b[1m"
_RESET = "\x1b[0m"

# Pane scrollback can hold terminal escapes and control characters: strip them
# before they reach a terminal or a Markdown renderer.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _clean(line: str) -> str:
    return _CONTROL.sub("", _ANSI.sub("", line)).replace("\t", "    ")


def _pct(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f} %"


def duration(seconds: float) -> str:
    """``0s``, ``45s``, ``12m``, ``1h15m``, ``2d03h``: short, for tables."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m" if s == 0 else f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def _date(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def sparkline(values: tuple[float | None, ...] | list[float | None], target: float) -> str:
    """One character per day; the scale is stretched below the target.

    A plain 0-100 scale would draw 96 % and 100 % alike; what an operator needs
    to see is which days missed the target and by how much.
    """
    out = []
    for v in values:
        if v is None:
            out.append(SPARK_NO_DATA)
        elif v >= 100.0 - 1e-9:
            out.append(SPARK_FULL)
        elif v >= target:
            out.append(SPARK_AT_TARGET)
        else:
            frac = v / target if target > 0 else 0.0
            out.append(SPARK_BELOW[min(len(SPARK_BELOW) - 1, max(0, int(frac * len(SPARK_BELOW))))])
    return "".join(out)


def _status(met: bool, color: bool) -> str:
    word = "MET" if met else "NOT MET"
    if not color:
        return word
    return f"{_GREEN if met else _RED}{word}{_RESET}"


def _check_row(c: Check, h: FleetHistory, color: bool) -> str:
    if c.key == "days_at_target":
        value = f"{h.days_at_target}/{h.days_total} days ({_pct(c.value, 1)})"
        target = f">= {c.target:g} % of days"
    elif c.key == "operational_now":
        value = f"{_pct(c.value)} ({c.detail})"
        target = f">= {c.target:g} %"
    else:
        value = _pct(c.value)
        target = f">= {c.target:g} %"
    return f"| {c.label} | {value} | {target} | {_status(c.met, color)} |"


def _agent_row(a: AgentHistory, h: FleetHistory, sparklines: bool) -> str:
    cells = [
        a.name,
        a.state_now or "-",
        _pct(a.uptime_pct),
        str(a.restarts),
        str(a.hangs),
        str(a.failovers),
        duration(a.longest_outage),
        _pct(a.utilization_pct, 1),
        duration(a.unknown),
        duration(a.paused + a.stopped),
        duration(a.unobserved),
    ]
    if sparklines:
        cells.append(f"`{sparkline(a.per_day_uptime, h.targets.uptime_pct)}`")
    return "| " + " | ".join(cells) + " |"


def _incident_lines(i: Incident, n: int) -> list[str]:
    state = "still open" if i.closed is None else f"closed {_when(i.closed)}"
    lines = [
        f"{n}. **{i.id}**: {i.scope} `{i.subject}`, {i.kind}; opened {_when(i.opened)}, "
        f"{state}; {duration(i.duration)} in the window"
    ]
    fx = i.forensics
    if fx is not None:
        how = []
        if fx.exit_status is not None:
            how.append(f"exit status {fx.exit_status}")
        if fx.signal is not None:
            how.append(f"signal {fx.signal}")
        lines.append(
            f"   - forensics: {_clean(fx.reason)}" + (f" ({', '.join(how)})" if how else "")
        )
        if fx.last_lines:
            lines.append("")
            lines.append("   ~~~~text")
            lines.extend(f"   {_clean(ln).replace('~~~~', '~ ~ ')}" for ln in fx.last_lines)
            lines.append("   ~~~~")
            lines.append("")
    return lines


def render_markdown(h: FleetHistory, *, color: bool = False, sparklines: bool = True) -> str:
    """The phase report: snapshot, agents, worst incidents, verdict."""
    days = h.days_total
    out = [
        "# fleetd phase report",
        "",
        f"Window: {_when(h.start)} to {_when(h.end)} ({days} day{'s' if days != 1 else ''}).",
        "",
        "## Resource snapshot",
        "",
        "| Resource | Value | Target | Status |",
        "|---|---|---|---|",
        *(_check_row(c, h, color) for c in h.checks),
        "",
        f"Fleet time: up {duration(h.up)}, down {duration(h.down)}, "
        f"busy {duration(h.busy)}; excluded: unreachable {duration(h.unknown)}, "
        f"paused {duration(h.paused)}, stopped {duration(h.stopped)}, "
        f"unobserved (fleetd down) {duration(h.unobserved)}. "
        f"Restarts {h.restarts}, hangs {h.hangs}, failovers {h.failovers}, "
        f"longest outage {duration(h.longest_outage)}.",
    ]
    if sparklines and days:
        out += [
            "",
            f"Fleet per day ({_date(h.days[0])} .. {_date(h.days[-1])}): "
            f"`{sparkline(h.per_day_uptime, h.targets.uptime_pct)}`",
        ]
    head = (
        "| Agent | Now | Uptime | Restarts | Hangs | Failovers | Longest outage | Busy share"
        " | Unreachable | Held | Unobserved |"
    )
    rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if sparklines:
        head += " Per day |"
        rule += "---|"
    out += ["", "## Agents", "", head, rule, *(_agent_row(a, h, sparklines) for a in h.agents)]
    if sparklines:
        out += ["", f"Per day: {SPARK_LEGEND}."]
    out += ["", "## Worst incidents", ""]
    if h.worst_incidents:
        for n, i in enumerate(h.worst_incidents, 1):
            out += _incident_lines(i, n)
    else:
        out.append("None in the window.")
    verdict = h.verdict.text
    if color:
        verdict = f"{_BOLD}{_GREEN if h.verdict.ready else _RED}{verdict}{_RESET}"
    out += ["", "## Verdict", "", f"**{verdict}**" if not color else verdict, ""]
    return "\n".join(line.rstrip() if line.strip() else "" for line in out)


# --- JSON ------------------------------------------------------------------------------


def _agent_json(a: AgentHistory) -> dict[str, Any]:
    return {
        "name": a.name,
        "state_now": a.state_now,
        "uptime_pct": a.uptime_pct,
        "utilization_pct": a.utilization_pct,
        "up_s": a.up,
        "down_s": a.down,
        "busy_s": a.busy,
        "unknown_s": a.unknown,
        "paused_s": a.paused,
        "stopped_s": a.stopped,
        "unobserved_s": a.unobserved,
        "restarts": a.restarts,
        "hangs": a.hangs,
        "failovers": a.failovers,
        "longest_outage_s": a.longest_outage,
        "per_day_uptime_pct": list(a.per_day_uptime),
    }


def _incident_json(i: Incident) -> dict[str, Any]:
    fx = i.forensics
    return {
        "id": i.id,
        "scope": i.scope,
        "subject": i.subject,
        "kind": i.kind,
        "opened": i.opened,
        "closed": i.closed,
        "duration_s": i.duration,
        "forensics": None
        if fx is None
        else {
            "reason": fx.reason,
            "exit_status": fx.exit_status,
            "signal": fx.signal,
            "last_lines": [_clean(ln) for ln in fx.last_lines],
        },
    }


def _window_json(h: FleetHistory) -> dict[str, Any]:
    return {"start": h.start, "end": h.end, "days": [_date(d) for d in h.days]}


def _targets_json(h: FleetHistory) -> dict[str, Any]:
    t = h.targets
    return {
        "uptime_pct": t.uptime_pct,
        "days_at_target_pct": t.days_at_target_pct,
        "utilization_pct": t.utilization_pct,
    }


def to_json(h: FleetHistory) -> dict[str, Any]:
    """The whole report as plain JSON types; keys documented in docs/history.md."""
    return {
        "version": JSON_VERSION,
        "window": _window_json(h),
        "targets": _targets_json(h),
        "fleet": {
            "uptime_pct": h.uptime_pct,
            "utilization_pct": h.utilization_pct,
            "up_s": h.up,
            "down_s": h.down,
            "busy_s": h.busy,
            "unknown_s": h.unknown,
            "paused_s": h.paused,
            "stopped_s": h.stopped,
            "unobserved_s": h.unobserved,
            "restarts": h.restarts,
            "hangs": h.hangs,
            "failovers": h.failovers,
            "longest_outage_s": h.longest_outage,
            "days_at_target": h.days_at_target,
            "days_total": h.days_total,
            "per_day_uptime_pct": list(h.per_day_uptime),
            "running_now": h.running_now,
            "countable_now": h.countable_now,
        },
        "checks": [
            {
                "key": c.key,
                "label": c.label,
                "value": c.value,
                "target": c.target,
                "met": c.met,
                "detail": c.detail,
            }
            for c in h.checks
        ],
        "agents": [_agent_json(a) for a in h.agents],
        "worst_incidents": [_incident_json(i) for i in h.worst_incidents],
        "verdict": {
            "ready": h.verdict.ready,
            "text": h.verdict.text,
            "missing": list(h.verdict.missing),
        },
    }


def uptime_summary(h: FleetHistory, agent: str | None) -> dict[str, Any]:
    """``fleetctl uptime [AGENT]``: the fleet line and one line per agent, or one agent.

    Raises :class:`fleetd.errors.UnknownAgent` for an agent not in the report.
    """
    base = {"version": JSON_VERSION, "window": _window_json(h), "targets": _targets_json(h)}
    if agent is not None:
        a = h.agent(agent)
        if a is None:
            raise UnknownAgent(f"no agent named {agent!r}", agent=agent)
        return {**base, "agent": _agent_json(a)}
    return {
        **base,
        "fleet": {
            "uptime_pct": h.uptime_pct,
            "utilization_pct": h.utilization_pct,
            "days_at_target": h.days_at_target,
            "days_total": h.days_total,
            "running_now": h.running_now,
            "countable_now": h.countable_now,
            "verdict": h.verdict.text,
        },
        "agents": [
            {
                "name": a.name,
                "state_now": a.state_now,
                "uptime_pct": a.uptime_pct,
                "utilization_pct": a.utilization_pct,
                "restarts": a.restarts,
                "longest_outage_s": a.longest_outage,
            }
            for a in h.agents
        ],
    }
