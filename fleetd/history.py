"""History from the event store: uptime, capacity and the phase report.

The supervision loop writes one row per agent state change (``events.state`` is
the agent's lifecycle state AFTER the event), and ``runs`` records when fleetd
itself was up. This module turns those rows into figures an operator reads:
uptime per agent and fleet, busy share, restarts, hangs, failovers, the longest
outage, days at target, the worst incidents and the phase verdict.

How time is classified (docs/history.md is the user-facing version):

* an agent's state is a step function of time: it holds an event's ``state``
  from that event's ``ts`` until its next event (rows in id order, ``ts``
  clamped to be non-decreasing per agent);
* time outside every ``runs`` interval is *unobserved* (fleetd was down): it is
  neither up nor down;
* observed time is split into up (RUNNING), down (STARTING, HUNG, BACKOFF,
  FATAL), unknown (host unreachable), paused and stopped (operator holds);
* uptime = up / (up + down); busy = RUNNING while the last agent_busy /
  agent_idle said busy; utilization = busy / up;
* time before an agent's first event is not counted at all (it did not exist).

Everything is accumulated per agent per UTC day ("buckets"). A report sums the
buckets of its window; :func:`compact` stores the buckets of old whole days in
``rollups`` and deletes the raw rows, so a report over day-aligned windows gives
the same figures before and after compaction (same buckets, same arithmetic).

Cost: a report reads only the window's rows (``events_ts`` index), plus a few
indexed look-ups per agent for the state at the window start. It never reads the
rest of the year.
"""

from __future__ import annotations

import math
import sqlite3
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fleetd.config import Targets
from fleetd.model import NOT_RESTART_CAUSES

DAY = 86400.0

UP_STATES = frozenset({"RUNNING"})
DOWN_STATES = frozenset({"STARTING", "HUNG", "BACKOFF", "FATAL"})
# Everything else that is a known state is excluded from the denominator.
EXCLUDED = {"UNKNOWN": "unknown", "PAUSED": "paused", "STOPPED": "stopped"}

BUSY_KINDS = ("agent_busy", "agent_idle")
WORST_INCIDENTS = 5
FORENSICS_LINES = 3
# A forensics capture may be stamped a little before the incident opens (it is
# taken at the death, the incident at the decision that follows).
FORENSICS_SLACK = 60.0

# Indexes and tables this module needs; the lead mirrors them in store.SCHEMA.
# Executed (idempotently) on first use of a connection.
HISTORY_SCHEMA = """
CREATE INDEX IF NOT EXISTS events_agent_kind_ts ON events (agent, kind, ts);
CREATE INDEX IF NOT EXISTS incidents_opened ON incidents (opened);
CREATE TABLE IF NOT EXISTS rollups (
    agent TEXT NOT NULL,
    day INTEGER NOT NULL,
    up REAL NOT NULL,
    down REAL NOT NULL,
    unknown REAL NOT NULL,
    paused REAL NOT NULL,
    stopped REAL NOT NULL,
    unobserved REAL NOT NULL,
    busy REAL NOT NULL,
    restarts INTEGER NOT NULL,
    hangs INTEGER NOT NULL,
    failovers INTEGER NOT NULL,
    longest_outage REAL NOT NULL,
    outage_head REAL NOT NULL,
    outage_tail REAL NOT NULL,
    outage_through INTEGER NOT NULL,
    last_state TEXT,
    last_busy INTEGER NOT NULL,
    PRIMARY KEY (agent, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollups_day ON rollups (day);
"""

COMPACTED_KEY = "history.compacted_until"


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the history indexes and the rollups table if they are missing.

    Statement by statement (not ``executescript``, which would COMMIT a caller's
    open transaction); each is a no-op once the object exists.
    """
    for stmt in HISTORY_SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)


# --- result types ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentHistory:
    name: str
    up: float
    down: float
    unknown: float
    paused: float
    stopped: float
    unobserved: float
    busy: float
    uptime_pct: float | None  # None: no countable time in the window
    utilization_pct: float | None  # None: never up in the window
    restarts: int
    hangs: int
    failovers: int
    longest_outage: float
    per_day_uptime: tuple[float | None, ...]  # one per window day
    state_now: str | None  # state at the window end; None: never seen


@dataclass(frozen=True, slots=True)
class ForensicsSummary:
    reason: str
    exit_status: int | None
    signal: int | None
    last_lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Incident:
    id: str
    scope: str
    subject: str
    kind: str
    opened: float
    closed: float | None  # None: still open
    duration: float  # within the window
    forensics: ForensicsSummary | None


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the resource snapshot: a figure against its target."""

    key: str
    label: str
    value: float | None
    target: float
    met: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    ready: bool
    missing: tuple[str, ...]

    @property
    def text(self) -> str:
        if self.ready:
            return "Phase 2 trigger: READY"
        return "Phase 2 trigger: NOT READY (" + "; ".join(self.missing) + ")"


@dataclass(frozen=True, slots=True)
class FleetHistory:
    start: float
    end: float
    targets: Targets
    days: tuple[float, ...]  # UTC midnight of each window day
    agents: tuple[AgentHistory, ...]
    up: float
    down: float
    unknown: float
    paused: float
    stopped: float
    unobserved: float
    busy: float
    uptime_pct: float | None
    utilization_pct: float | None
    per_day_uptime: tuple[float | None, ...]
    days_at_target: int
    restarts: int
    hangs: int
    failovers: int
    longest_outage: float
    running_now: int
    countable_now: int  # agents not paused or stopped at the window end
    worst_incidents: tuple[Incident, ...]
    checks: tuple[Check, ...]
    verdict: Verdict

    @property
    def days_total(self) -> int:
        return len(self.days)

    def agent(self, name: str) -> AgentHistory | None:
        for a in self.agents:
            if a.name == name:
                return a
        return None


# --- per-day buckets ----------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    """One agent's figures for one UTC day (or the part of it in the window).

    ``head`` is the down stretch that starts at the bucket's start, ``tail`` the
    one that reaches its end and ``through`` says the whole bucket was down; with
    them, outages that cross midnight merge exactly across buckets.
    """

    up: float = 0.0
    down: float = 0.0
    unknown: float = 0.0
    paused: float = 0.0
    stopped: float = 0.0
    unobserved: float = 0.0
    busy: float = 0.0
    restarts: int = 0
    hangs: int = 0
    failovers: int = 0
    longest: float = 0.0
    head: float = 0.0
    tail: float = 0.0
    through: bool = True
    last_state: str | None = None
    last_busy: bool = False
    # scratch while the day is open
    _run: float = 0.0


class _Observed:
    """Sorted, disjoint intervals when fleetd was up."""

    def __init__(self, intervals: Iterable[tuple[float, float]]) -> None:
        merged: list[list[float]] = []
        for a, b in sorted(intervals):
            if b <= a:
                continue
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.starts = [m[0] for m in merged]
        self.ends = [m[1] for m in merged]

    def at(self, t: float) -> tuple[bool, float]:
        """(observed at t, time the answer next changes)."""
        i = bisect_right(self.starts, t) - 1
        if i >= 0 and t < self.ends[i]:
            return True, self.ends[i]
        nxt = self.starts[i + 1] if i + 1 < len(self.starts) else math.inf
        return False, nxt


class _Agent:
    """Accumulates one agent's buckets while its events stream by in order."""

    __slots__ = ("buckets", "busy", "cur", "cur_day", "lo", "obs", "state", "t")

    def __init__(self, obs: _Observed, t0: float, lo: float, state: str | None, busy: bool):
        self.obs = obs
        self.t = t0
        self.lo = lo  # window start: a bucket never starts before it
        self.state = state
        self.busy = busy
        self.buckets: dict[int, _Bucket] = {}
        self.cur: _Bucket | None = None
        self.cur_day = -1

    def _bucket(self, day: int, a: float) -> _Bucket:
        if day != self.cur_day:
            self._close()
            b = self.buckets.get(day)
            if b is None:
                b = self.buckets[day] = _Bucket()
                # A bucket that does not begin at its day's (window-clipped) start
                # has no head: the agent was untracked before.
                b.through = a <= max(day * DAY, self.lo)
            self.cur, self.cur_day = b, day
        assert self.cur is not None
        return self.cur

    def _close(self) -> None:
        b = self.cur
        if b is not None:
            b.tail = b._run
            b.longest = max(b.longest, b._run)
            b.last_state = self.state
            b.last_busy = self.busy
        self.cur = None
        self.cur_day = -1

    def advance(self, to: float) -> None:
        a = self.t
        if to <= a:
            return
        self.t = to
        state = self.state
        if state is None:
            return  # untracked time is not counted
        obs = self.obs
        while a < to:
            day = int(a // DAY)
            observed, change = obs.at(a)
            b_end = min(to, (day + 1) * DAY, change)
            span = b_end - a
            bk = self._bucket(day, a)
            down = False
            if not observed:
                bk.unobserved += span
            elif state in UP_STATES:
                bk.up += span
                if self.busy:
                    bk.busy += span
            elif state in DOWN_STATES:
                bk.down += span
                down = True
            elif state == "UNKNOWN":
                bk.unknown += span
            elif state == "PAUSED":
                bk.paused += span
            elif state == "STOPPED":
                bk.stopped += span
            else:  # an unrecognised state is treated as not up
                bk.down += span
                down = True
            if down:
                bk._run += span
                if bk.through:
                    bk.head += span
            elif span > 0:
                bk.through = False
                bk.longest = max(bk.longest, bk._run)
                bk._run = 0.0
            a = b_end

    def event(self, ts: float, kind: str, state: str | None, cause: str | None) -> None:
        t = max(ts, self.t)
        self.advance(t)
        if self.cur is not None and t >= (self.cur_day + 1) * DAY:
            self._close()  # the day ended before this event: it keeps the old state
        if state is not None:
            self.state = state
        if kind == "agent_busy":
            self.busy = True
        elif kind == "agent_idle":
            self.busy = False
        counted = kind in ("agent_started", "agent_hung", "failover")
        if counted and not (
            kind == "agent_started" and (cause or "").startswith(NOT_RESTART_CAUSES)
        ):
            bk = self._bucket(int(t // DAY), t)
            if kind == "agent_started":
                bk.restarts += 1
            elif kind == "agent_hung":
                bk.hangs += 1
            else:
                bk.failovers += 1

    def finish(self, end: float) -> dict[int, _Bucket]:
        self.advance(end)
        self._close()
        return self.buckets


# --- reading the store ---------------------------------------------------------------


def _compacted_until(conn: sqlite3.Connection) -> float:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (COMPACTED_KEY,)).fetchone()
    return float(row[0]) if row else 0.0


def _observed(conn: sqlite3.Connection, lo: float, hi: float) -> _Observed:
    rows = conn.execute(
        "SELECT started, COALESCE(stopped, last_seen) FROM runs"
        " WHERE started < ? AND COALESCE(stopped, last_seen) > ?",
        (hi, lo),
    )
    return _Observed((float(a), float(b)) for a, b in rows)


def _all_agents(conn: sqlite3.Connection) -> list[str]:
    # A skip-scan over the (agent, ts) index: one probe per distinct agent
    # instead of reading every row.
    rows = conn.execute(
        "WITH RECURSIVE a(name) AS ("
        " SELECT MIN(agent) FROM events WHERE agent IS NOT NULL"
        " UNION ALL"
        " SELECT (SELECT MIN(agent) FROM events WHERE agent > a.name) FROM a"
        " WHERE a.name IS NOT NULL)"
        " SELECT name FROM a WHERE name IS NOT NULL"
    ).fetchall()
    names = {r[0] for r in rows}
    names.update(r[0] for r in conn.execute("SELECT DISTINCT agent FROM rollups"))
    return sorted(names)


def _initial(
    conn: sqlite3.Connection, agent: str, t0: float, floor: float
) -> tuple[str | None, bool]:
    """The agent's state and busy flag just before ``t0``.

    Raw rows older than ``floor`` (the compaction boundary) are ignored: their
    effect is in the rollups, whose last day gives the state when no raw row does.
    """
    row = conn.execute(
        "SELECT state FROM events WHERE agent = ? AND ts < ? AND ts >= ?"
        " AND state IS NOT NULL ORDER BY ts DESC, id DESC LIMIT 1",
        (agent, t0, floor),
    ).fetchone()
    best: tuple[float, int, bool] | None = None
    for kind in BUSY_KINDS:
        b = conn.execute(
            "SELECT ts, id FROM events WHERE agent = ? AND kind = ? AND ts < ? AND ts >= ?"
            " ORDER BY ts DESC, id DESC LIMIT 1",
            (agent, kind, t0, floor),
        ).fetchone()
        if b is not None and (best is None or (b[0], b[1]) > best[:2]):
            best = (b[0], b[1], kind == "agent_busy")
    state: str | None = row[0] if row else None
    busy = best[2] if best else False
    if (row is None or best is None) and floor > 0:
        r = conn.execute(
            "SELECT last_state, last_busy FROM rollups WHERE agent = ? AND day < ?"
            " ORDER BY day DESC LIMIT 1",
            (agent, int(min(t0, floor) // DAY)),
        ).fetchone()
        if r is not None:
            if row is None:
                state = r[0]
            if best is None:
                busy = bool(r[1])
    return state, busy


def _raw_buckets(
    conn: sqlite3.Connection,
    lo: float,
    hi: float,
    names: Sequence[str],
    floor: float,
) -> tuple[dict[str, dict[int, _Bucket]], dict[str, str | None]]:
    """Buckets of [lo, hi) from raw events, for ``names``; and each state at ``hi``."""
    obs = _observed(conn, lo, hi)
    accs: dict[str, _Agent] = {}
    for name in names:
        state, busy = _initial(conn, name, lo, floor)
        accs[name] = _Agent(obs, lo, lo, state, busy)
    rows = conn.execute(
        "SELECT agent, ts, kind, state,"
        " CASE WHEN kind = 'agent_started' THEN json_extract(data, '$.cause') END"
        " FROM events WHERE ts >= ? AND ts < ? AND agent IS NOT NULL ORDER BY id",
        (lo, hi),
    )
    get = accs.get
    for agent, ts, kind, state, cause in rows:
        acc = get(agent)
        if acc is not None:
            acc.event(ts, kind, state, cause)
    buckets = {name: acc.finish(hi) for name, acc in accs.items()}
    return buckets, {name: acc.state for name, acc in accs.items()}


def _rollup_bucket(r: Any) -> _Bucket:
    return _Bucket(
        up=float(r[2]),
        down=float(r[3]),
        unknown=float(r[4]),
        paused=float(r[5]),
        stopped=float(r[6]),
        unobserved=float(r[7]),
        busy=float(r[8]),
        restarts=int(r[9]),
        hangs=int(r[10]),
        failovers=int(r[11]),
        longest=float(r[12]),
        head=float(r[13]),
        tail=float(r[14]),
        through=bool(r[15]),
        last_state=r[16],
        last_busy=bool(r[17]),
    )


_ROLLUP_COLS = (
    "agent, day, up, down, unknown, paused, stopped, unobserved, busy, restarts, hangs,"
    " failovers, longest_outage, outage_head, outage_tail, outage_through, last_state, last_busy"
)


def _scaled(b: _Bucket, f: float) -> _Bucket:
    """A compacted day only partly inside the window: durations pro rata (approximate)."""
    return _Bucket(
        up=b.up * f,
        down=b.down * f,
        unknown=b.unknown * f,
        paused=b.paused * f,
        stopped=b.stopped * f,
        unobserved=b.unobserved * f,
        busy=b.busy * f,
        restarts=b.restarts,
        hangs=b.hangs,
        failovers=b.failovers,
        longest=min(b.longest, DAY * f),
        head=b.head * f,
        tail=b.tail * f,
        through=b.through,
        last_state=b.last_state,
        last_busy=b.last_busy,
    )


def _rollup_buckets(
    conn: sqlite3.Connection, lo: float, hi: float, names: set[str]
) -> dict[str, dict[int, _Bucket]]:
    out: dict[str, dict[int, _Bucket]] = {}
    d0, d1 = int(lo // DAY), math.ceil(hi / DAY)
    rows = conn.execute(
        f"SELECT {_ROLLUP_COLS} FROM rollups WHERE day >= ? AND day < ?",  # noqa: S608
        (d0, d1),
    )
    for r in rows:
        if r[0] not in names:
            continue
        b = _rollup_bucket(r)
        day = int(r[1])
        overlap = min(hi, (day + 1) * DAY) - max(lo, day * DAY)
        if overlap < DAY:
            b = _scaled(b, overlap / DAY)
        out.setdefault(r[0], {})[day] = b
    return out


# --- combining buckets -----------------------------------------------------------------


def _longest_outage(days: Sequence[int], buckets: dict[int, _Bucket]) -> float:
    best = run = 0.0
    prev: int | None = None
    for d in days:
        b = buckets.get(d)
        if b is None or (prev is not None and d != prev + 1):
            best = max(best, run)
            run = 0.0
        if b is None:
            prev = None
            continue
        run += b.head
        if not b.through:
            best = max(best, run)
            run = b.tail
        best = max(best, b.longest)
        prev = d
    return max(best, run)


def _pct(num: float, den: float) -> float | None:
    return 100.0 * num / den if den > 0 else None


def _agent_history(
    name: str, days: Sequence[int], buckets: dict[int, _Bucket], state_now: str | None
) -> AgentHistory:
    bs = [buckets[d] for d in days if d in buckets]
    up = sum(b.up for b in bs)
    down = sum(b.down for b in bs)
    busy = sum(b.busy for b in bs)
    per_day = tuple(
        _pct(buckets[d].up, buckets[d].up + buckets[d].down) if d in buckets else None for d in days
    )
    return AgentHistory(
        name=name,
        up=up,
        down=down,
        unknown=sum(b.unknown for b in bs),
        paused=sum(b.paused for b in bs),
        stopped=sum(b.stopped for b in bs),
        unobserved=sum(b.unobserved for b in bs),
        busy=busy,
        uptime_pct=_pct(up, up + down),
        utilization_pct=_pct(busy, up),
        restarts=sum(b.restarts for b in bs),
        hangs=sum(b.hangs for b in bs),
        failovers=sum(b.failovers for b in bs),
        longest_outage=_longest_outage(days, buckets),
        per_day_uptime=per_day,
        state_now=state_now,
    )


# --- incidents ------------------------------------------------------------------------


def _last_lines(scrollback: str, n: int = FORENSICS_LINES) -> tuple[str, ...]:
    lines = [ln.rstrip() for ln in scrollback.splitlines() if ln.strip()]
    return tuple(lines[-n:])


def _worst_incidents(
    conn: sqlite3.Connection, start: float, end: float, names: set[str], limit: int
) -> tuple[Incident, ...]:
    rows = conn.execute(
        "SELECT id, scope, subject, kind, opened, closed,"
        " MIN(COALESCE(closed, ?), ?) - MAX(opened, ?) AS dur"
        " FROM incidents WHERE opened < ? AND (closed IS NULL OR closed > ?)"
        " ORDER BY dur DESC, opened",
        (end, end, start, end, start),
    )
    out: list[Incident] = []
    for iid, scope, subject, kind, opened, closed, dur in rows:
        if scope == "agent" and subject not in names:
            continue
        fx: ForensicsSummary | None = None
        if scope == "agent":
            f = conn.execute(
                "SELECT reason, exit_status, signal, scrollback FROM forensics"
                " WHERE agent = ? AND ts >= ? AND ts <= ? ORDER BY ts, id LIMIT 1",
                (subject, opened - FORENSICS_SLACK, closed if closed is not None else end),
            ).fetchone()
            if f is not None:
                fx = ForensicsSummary(f[0], f[1], f[2], _last_lines(f[3] or ""))
        out.append(Incident(iid, scope, subject, kind, opened, closed, float(dur), fx))
        if len(out) >= limit:
            break
    return tuple(out)


# --- the report -------------------------------------------------------------------------


def window_days(start: float, end: float) -> list[int]:
    """UTC day numbers (epoch seconds // 86400) that intersect [start, end)."""
    if end <= start:
        return []
    return list(range(int(start // DAY), math.ceil(end / DAY)))


def last_days(now: float, days: int = 30) -> tuple[float, float]:
    """A window of ``days`` UTC days ending at ``now`` (today counts, partly).

    Day-aligned starts keep reports exact across compaction.
    """
    return (math.floor(now / DAY) - (days - 1)) * DAY, now


def _checks(
    t: Targets,
    *,
    uptime: float | None,
    days_at: int,
    days_total: int,
    util: float | None,
    running: int,
    countable: int,
) -> tuple[Check, ...]:
    oper = _pct(running, countable)
    days_pct = _pct(days_at, days_total)
    return (
        Check(
            "operational_now",
            "Fleet operational now",
            oper,
            t.uptime_pct,
            oper is not None and oper >= t.uptime_pct,
            f"{running}/{countable} agents RUNNING",
        ),
        Check(
            "uptime",
            "Fleet uptime (window)",
            uptime,
            t.uptime_pct,
            uptime is not None and uptime >= t.uptime_pct,
            "up / (observed - paused - stopped - unknown)",
        ),
        Check(
            "days_at_target",
            "Days at target",
            days_pct,
            t.days_at_target_pct,
            days_pct is not None and days_pct >= t.days_at_target_pct,
            f"{days_at}/{days_total} days with fleet uptime >= {t.uptime_pct:g}%",
        ),
        Check(
            "utilization",
            "Capacity utilization",
            util,
            t.utilization_pct,
            util is not None and util >= t.utilization_pct,
            "busy time / up time",
        ),
    )


def _verdict(checks: Sequence[Check]) -> Verdict:
    missing = []
    for c in checks:
        if c.key == "operational_now" or c.met:
            continue
        value = "no data" if c.value is None else f"{c.value:.2f}%"
        missing.append(f"{c.label.lower()} {value} < {c.target:g}%")
    return Verdict(not missing, tuple(missing))


def compute(
    conn: sqlite3.Connection,
    start: float,
    end: float,
    targets: Targets,
    *,
    agents: Sequence[str] | None = None,
    worst: int = WORST_INCIDENTS,
) -> FleetHistory:
    """The history of [start, end) for ``agents`` (default: every agent ever seen).

    Pass the roster's agent names so removed agents do not linger in the report.
    Windows that start at a UTC midnight (see :func:`last_days`) give the same
    figures before and after :func:`compact`.
    """
    ensure_schema(conn)
    names = list(agents) if agents is not None else _all_agents(conn)
    name_set = set(names)
    floor = _compacted_until(conn)
    days = window_days(start, end)
    buckets: dict[str, dict[int, _Bucket]] = {n: {} for n in names}
    if start < floor:
        for name, bs in _rollup_buckets(conn, start, min(end, floor), name_set).items():
            buckets[name].update(bs)
    raw_lo = max(start, floor)
    state_now: dict[str, str | None] = dict.fromkeys(names)
    if raw_lo < end:
        raw, state_now = _raw_buckets(conn, raw_lo, end, names, floor)
        for name, bs in raw.items():
            buckets[name].update(bs)
    else:  # the whole window is compacted: its last day knows the state
        for name in names:
            bs = buckets[name]
            if bs:
                state_now[name] = bs[max(bs)].last_state
    hist = tuple(_agent_history(n, days, buckets[n], state_now[n]) for n in names)

    up = sum(a.up for a in hist)
    down = sum(a.down for a in hist)
    busy = sum(a.busy for a in hist)
    per_day: list[float | None] = []
    for d in days:
        du = sum(buckets[n][d].up for n in names if d in buckets[n])
        dd = sum(buckets[n][d].down for n in names if d in buckets[n])
        per_day.append(_pct(du, du + dd))
    days_at = sum(1 for p in per_day if p is not None and p >= targets.uptime_pct)
    running = sum(1 for a in hist if a.state_now == "RUNNING")
    countable = sum(
        1 for a in hist if a.state_now is not None and a.state_now not in ("PAUSED", "STOPPED")
    )
    uptime = _pct(up, up + down)
    util = _pct(busy, up)
    checks = _checks(
        targets,
        uptime=uptime,
        days_at=days_at,
        days_total=len(days),
        util=util,
        running=running,
        countable=countable,
    )
    return FleetHistory(
        start=start,
        end=end,
        targets=targets,
        days=tuple(d * DAY for d in days),
        agents=hist,
        up=up,
        down=down,
        unknown=sum(a.unknown for a in hist),
        paused=sum(a.paused for a in hist),
        stopped=sum(a.stopped for a in hist),
        unobserved=sum(a.unobserved for a in hist),
        busy=busy,
        uptime_pct=uptime,
        utilization_pct=util,
        per_day_uptime=tuple(per_day),
        days_at_target=days_at,
        restarts=sum(a.restarts for a in hist),
        hangs=sum(a.hangs for a in hist),
        failovers=sum(a.failovers for a in hist),
        longest_outage=max((a.longest_outage for a in hist), default=0.0),
        running_now=running,
        countable_now=countable,
        worst_incidents=_worst_incidents(conn, start, end, name_set, worst),
        checks=checks,
        verdict=_verdict(checks),
    )


# --- compaction ----------------------------------------------------------------------------


def compact(conn: sqlite3.Connection, before: float) -> int:
    """Fold raw agent events of whole UTC days before ``before`` into ``rollups``.

    ``before`` is rounded down to a UTC midnight. Returns the number of raw event
    rows deleted. Incremental: days already folded are not folded again. Runs in
    one savepoint, so a failure leaves the store as it was. It reads every row it
    folds: on a big backlog, run it on its own connection in a worker thread.
    """
    ensure_schema(conn)
    boundary = math.floor(before / DAY) * DAY
    floor = _compacted_until(conn)
    if floor <= 0:
        row = conn.execute("SELECT MIN(ts) FROM events WHERE agent IS NOT NULL").fetchone()
        if row[0] is None:
            return 0
        floor = math.floor(float(row[0]) / DAY) * DAY
    if boundary <= floor:
        return 0
    conn.execute("SAVEPOINT history_compact")
    try:
        names = _all_agents(conn)
        raw, _ = _raw_buckets(conn, floor, boundary, names, floor)
        conn.executemany(
            f"INSERT OR REPLACE INTO rollups ({_ROLLUP_COLS})"  # noqa: S608
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _rollup_rows(raw),
        )
        cur = conn.execute("DELETE FROM events WHERE agent IS NOT NULL AND ts < ?", (boundary,))
        deleted = cur.rowcount
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (COMPACTED_KEY, repr(boundary))
        )
    except BaseException:
        conn.execute("ROLLBACK TO history_compact")
        conn.execute("RELEASE history_compact")
        raise
    conn.execute("RELEASE history_compact")
    return int(deleted)


def _rollup_rows(raw: dict[str, dict[int, _Bucket]]) -> Iterator[tuple[object, ...]]:
    for name, bs in raw.items():
        for day, b in bs.items():
            yield (
                name,
                day,
                b.up,
                b.down,
                b.unknown,
                b.paused,
                b.stopped,
                b.unobserved,
                b.busy,
                b.restarts,
                b.hangs,
                b.failovers,
                b.longest,
                b.head,
                b.tail,
                int(b.through),
                b.last_state,
                int(b.last_busy),
            )


__all__ = [
    "DAY",
    "HISTORY_SCHEMA",
    "AgentHistory",
    "Check",
    "FleetHistory",
    "ForensicsSummary",
    "Incident",
    "Verdict",
    "compact",
    "compute",
    "ensure_schema",
    "last_days",
    "window_days",
]
