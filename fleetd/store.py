"""The event store: SQLite in WAL mode, in the state directory.

Every state transition, respawn, forensics record and operator command is a row
in ``events`` with the wall time it happened (a death is dated by tmux's
``pane_dead_time`` when known, not by when fleetd noticed) and its cause.
``forensics`` keeps what was captured before a respawn. ``holds`` keeps operator
holds (stopped / paused) so they survive a fleetd restart; ``incidents`` keeps
alert state so an alert already sent is never repeated after a restart;
``runs`` records when fleetd itself was up, so history can tell "unobserved"
time from uptime.

Writes are synchronous on the event loop thread: each is one small insert in WAL
mode with ``synchronous=NORMAL`` (tens of microseconds), cheaper than a thread
hop, and it keeps the order of events exactly the order of decisions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetd.errors import StoreError

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    host TEXT,
    agent TEXT,
    state TEXT,
    incident TEXT,
    alert INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_agent_ts ON events (agent, ts);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS forensics (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    host TEXT NOT NULL,
    agent TEXT NOT NULL,
    reason TEXT NOT NULL,
    exit_status INTEGER,
    signal INTEGER,
    pid INTEGER,
    scrollback TEXT NOT NULL DEFAULT '',
    heartbeat TEXT
);
CREATE INDEX IF NOT EXISTS forensics_agent ON forensics (agent, ts);
CREATE TABLE IF NOT EXISTS holds (
    agent TEXT PRIMARY KEY, hold TEXT NOT NULL, ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    opened REAL NOT NULL,
    closed REAL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    last_seen REAL NOT NULL,
    stopped REAL
);
"""


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    ts: float
    kind: str
    host: str | None
    agent: str | None
    state: str | None
    incident: str | None
    alert: bool
    message: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "kind": self.kind,
            "host": self.host,
            "agent": self.agent,
            "state": self.state,
            "incident": self.incident,
            "alert": self.alert,
            "message": self.message,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class ForensicsRow:
    id: int
    ts: float
    host: str
    agent: str
    reason: str
    exit_status: int | None
    signal: int | None
    pid: int | None
    scrollback: str
    heartbeat: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "host": self.host,
            "agent": self.agent,
            "reason": self.reason,
            "exit_status": self.exit_status,
            "signal": self.signal,
            "pid": self.pid,
            "scrollback": self.scrollback,
            "heartbeat": self.heartbeat,
        }


def _event(row: sqlite3.Row) -> EventRow:
    return EventRow(
        row["id"],
        row["ts"],
        row["kind"],
        row["host"],
        row["agent"],
        row["state"],
        row["incident"],
        bool(row["alert"]),
        row["message"],
        json.loads(row["data"]),
    )


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
            # History's indexes and rollups table live in the same file; created here
            # so that reports can run on a read-only connection.
            from fleetd.history import ensure_schema

            ensure_schema(self._db)
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open event store {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._db
        except sqlite3.Error as exc:
            raise StoreError(f"event store {self.path}: {exc}") from None

    # --- events ---------------------------------------------------------------

    def add_event(
        self,
        ts: float,
        kind: str,
        message: str,
        *,
        host: str | None = None,
        agent: str | None = None,
        state: str | None = None,
        incident: str | None = None,
        alert: bool = False,
        data: dict[str, Any] | None = None,
    ) -> int:
        with self._guard() as db:
            cur = db.execute(
                "INSERT INTO events(ts, kind, host, agent, state, incident, alert, message, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ts,
                    kind,
                    host,
                    agent,
                    state,
                    incident,
                    int(alert),
                    message,
                    json.dumps(data or {}, default=str, sort_keys=True),
                ),
            )
            return int(cur.lastrowid or 0)

    def events(
        self,
        *,
        after_id: int = 0,
        agent: str | None = None,
        kinds: Sequence[str] | None = None,
        since: float | None = None,
        limit: int = 1000,
        newest: bool = False,
    ) -> list[EventRow]:
        sql = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [after_id]
        if agent is not None:
            sql += " AND agent = ?"
            args.append(agent)
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if newest:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id"  # noqa: S608
        else:
            sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        with self._guard() as db:
            return [_event(r) for r in db.execute(sql, args)]

    def last_event_id(self) -> int:
        with self._guard() as db:
            row = db.execute("SELECT MAX(id) FROM events").fetchone()
            return int(row[0] or 0)

    # --- forensics ------------------------------------------------------------

    def add_forensics(
        self,
        ts: float,
        host: str,
        agent: str,
        reason: str,
        *,
        exit_status: int | None,
        signal: int | None,
        pid: int | None,
        scrollback: str,
        heartbeat: str | None,
    ) -> int:
        with self._guard() as db:
            cur = db.execute(
                "INSERT INTO forensics(ts, host, agent, reason, exit_status, signal, pid,"
                " scrollback, heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ts, host, agent, reason, exit_status, signal, pid, scrollback, heartbeat),
            )
            return int(cur.lastrowid or 0)

    def forensics(self, agent: str, limit: int = 10) -> list[ForensicsRow]:
        with self._guard() as db:
            rows = db.execute(
                "SELECT * FROM forensics WHERE agent = ? ORDER BY id DESC LIMIT ?", (agent, limit)
            ).fetchall()
        return [
            ForensicsRow(
                r["id"],
                r["ts"],
                r["host"],
                r["agent"],
                r["reason"],
                r["exit_status"],
                r["signal"],
                r["pid"],
                r["scrollback"],
                r["heartbeat"],
            )
            for r in rows
        ]

    # --- operator holds -----------------------------------------------------

    def set_hold(self, agent: str, hold: str | None, ts: float) -> None:
        with self._guard() as db:
            if hold is None:
                db.execute("DELETE FROM holds WHERE agent = ?", (agent,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO holds(agent, hold, ts) VALUES (?, ?, ?)",
                    (agent, hold, ts),
                )

    def holds(self) -> dict[str, str]:
        with self._guard() as db:
            return {r["agent"]: r["hold"] for r in db.execute("SELECT agent, hold FROM holds")}

    # --- incidents ----------------------------------------------------------

    def open_incident(self, incident: str, scope: str, subject: str, kind: str, ts: float) -> None:
        with self._guard() as db:
            db.execute(
                "INSERT OR IGNORE INTO incidents(id, scope, subject, kind, opened)"
                " VALUES (?, ?, ?, ?, ?)",
                (incident, scope, subject, kind, ts),
            )

    def close_incident(self, incident: str, ts: float) -> None:
        with self._guard() as db:
            db.execute(
                "UPDATE incidents SET closed = ? WHERE id = ? AND closed IS NULL", (ts, incident)
            )

    def open_incidents(self) -> list[dict[str, Any]]:
        with self._guard() as db:
            rows = db.execute("SELECT * FROM incidents WHERE closed IS NULL ORDER BY opened")
            return [dict(r) for r in rows]

    # --- fleetd's own runs ------------------------------------------------------

    def run_started(self, pid: int, ts: float) -> int:
        with self._guard() as db:
            cur = db.execute(
                "INSERT INTO runs(pid, started, last_seen) VALUES (?, ?, ?)", (pid, ts, ts)
            )
            return int(cur.lastrowid or 0)

    def run_seen(self, run_id: int, ts: float) -> None:
        with self._guard() as db:
            db.execute("UPDATE runs SET last_seen = ? WHERE id = ?", (ts, run_id))

    def run_stopped(self, run_id: int, ts: float) -> None:
        with self._guard() as db:
            db.execute("UPDATE runs SET last_seen = ?, stopped = ? WHERE id = ?", (ts, ts, run_id))

    def runs(self) -> list[dict[str, Any]]:
        with self._guard() as db:
            return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY started")]

    @property
    def connection(self) -> sqlite3.Connection:
        """For read-only reporting queries (history)."""
        return self._db
