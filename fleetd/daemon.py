"""fleetd itself: wiring of roster, store, hosts, supervisors and the control socket.

Start-up order (READY is only announced at the end): load and validate the
roster, take the single-instance lock, open the store, adopt what already runs
on every host, listen on the control socket, then tell systemd READY=1.

Shutdown never touches agents: SIGTERM cancels fleetd's own tasks, records the
stop, and exits; agents keep running in their tmux panes and the next fleetd
adopts them. A second SIGINT forces an immediate exit. SIGHUP reloads the roster
(validated first; an invalid roster leaves the running one in force).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from fleetd import __version__
from fleetd.alerts import AlertSink, configure_logging
from fleetd.config import AgentSpec, Roster, load_roster
from fleetd.control import protocol
from fleetd.control.server import ControlServer
from fleetd.deadman import write_self_heartbeat
from fleetd.errors import (
    BadArguments,
    ConfigError,
    FleetError,
    InvalidCommand,
    UnknownAgent,
)
from fleetd.events import EventBus
from fleetd.failover import ProviderManager
from fleetd.federation import FederatedSupervisor, supervisor_class
from fleetd.hosts.base import Host
from fleetd.hosts.local import LocalHost
from fleetd.journal import JournalWriter
from fleetd.model import NOT_RESTART_CAUSES, State
from fleetd.render import check_agent
from fleetd.store import Store
from fleetd.supervisor import AgentRuntime, HostSupervisor
from fleetd.systemd import Notifier

log = structlog.get_logger("fleetd")

SHUTDOWN_BOUND = 10.0


def make_host(name: str, roster: Roster) -> Host:
    spec = roster.hosts[name]
    if spec.kind == "local":
        return LocalHost(name)
    from fleetd.hosts.ssh import SshHost  # imported only when a remote host is configured

    return SshHost(spec)


def check_roster(path: str) -> Roster:
    """Load, validate and check every template; raises ConfigError."""
    roster = load_roster(path)
    for spec in roster.agents.values():
        check_agent(spec)
    return roster


@dataclass
class Lock:
    fd: int
    path: Path

    @classmethod
    def acquire(cls, path: Path) -> Lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise FleetError(
                f"another fleetd is already running (pid {other or '?'}, lock {path}); "
                "two daemons would start agents twice, so this one exits"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(fd, path)

    def release(self) -> None:
        os.close(self.fd)


class Fleet:
    """All supervisors plus the control-command handlers."""

    def __init__(
        self, roster: Roster, store: Store, bus: EventBus, notifier: Notifier | None = None
    ) -> None:
        self.notifier = notifier or Notifier.disabled()
        self._status_sent = ""
        self.roster = roster
        self.store = store
        self.bus = bus
        self.supervisors: dict[str, HostSupervisor] = {}
        self.started_wall = time.time()
        self.progress_at = time.monotonic()
        self._tg: anyio.abc.TaskGroup | None = None
        self.reload_error: str | None = None
        self.run_id = 0
        self._reload_lock = anyio.Lock()
        self._scopes: dict[str, anyio.CancelScope] = {}
        self.providers = ProviderManager(roster, store, bus)

    def on_progress(self) -> None:
        """Called by every completed supervision cycle: the only source of watchdog
        pings, so a wedged loop (or a cycle stuck on tmux) stops them."""
        self.progress_at = time.monotonic()
        self.notifier.progress(self.progress_at)
        line = self.status_line()
        if line != self._status_sent:
            self._status_sent = line
            self.notifier.status(line)

    def build(self) -> None:
        holds = self.store.holds()
        incidents = {
            i["subject"]: i["id"] for i in self.store.open_incidents() if i["scope"] == "agent"
        }
        for host_name in sorted({a.host for a in self.roster.agents.values()} | {"local"}):
            sup = self.new_supervisor(host_name)
            for spec in self.roster.agents_on(host_name):
                sup.add_agent(spec, sup.initial_agent(spec, holds, incidents))
            self.supervisors[host_name] = sup

    def update_metrics(self, metrics: Any, after_id: int) -> None:
        counts: dict[tuple[str, str], int] = {}
        now = time.monotonic()
        for host, sup in self.supervisors.items():
            metrics.set_host_reachable(host, sup.reachable)
            if sup.last_cycle_duration is not None:
                metrics.observe_cycle(host, sup.last_cycle_duration)
            for rt in sup.agents.values():
                key = (str(rt.agent.state), host)
                counts[key] = counts.get(key, 0) + 1
                if rt.agent.last_beat_at is not None:
                    metrics.set_heartbeat_age(rt.name, now - rt.agent.last_beat_at)
        metrics.set_agent_states(counts)
        metrics.set_incidents_open(len(self.store.open_incidents()))
        metrics.set_loop_lag(max(0.0, now - self.progress_at))
        for e in self.store.events(
            after_id=after_id, limit=100000, kinds=["agent_started", "agent_hung", "failover"]
        ):
            if e.agent is None:
                continue
            if e.kind == "agent_hung":
                metrics.inc_hang(e.agent)
            elif e.kind == "failover":
                metrics.inc_failover(e.agent)
            elif not str(e.data.get("cause", "")).startswith(NOT_RESTART_CAUSES):
                metrics.inc_restart(e.agent)

    def new_supervisor(self, host_name: str) -> HostSupervisor:
        # mode = "federated": the host's own fleetd supervises (fleetd/federation.py).
        sup = supervisor_class(self.roster.hosts[host_name].mode)(
            make_host(host_name, self.roster),
            self.roster,
            self.store,
            self.bus,
            on_progress=self.on_progress,
        )
        self.providers.attach(sup)  # provider choice, env, reports, drift, redaction
        # The watchdog is pinged from completed cycles: cycle at least that often.
        max_sleep = self.notifier.max_sleep()
        if max_sleep is not None:
            sup.cycle_interval = min(sup.cycle_interval, max_sleep)
        return sup

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        for name, sup in self.supervisors.items():
            await tg.start(self._run_supervisor, name, sup)

    async def _run_supervisor(
        self, name: str, sup: HostSupervisor, *, task_status: TaskStatus[None]
    ) -> None:
        """Run one host's supervisor in a scope of its own, so that a host removed from
        the roster can be stopped without stopping the others."""
        with anyio.CancelScope() as scope:
            self._scopes[name] = scope
            await sup.run(task_status=task_status)

    # --- lookup ----------------------------------------------------------------

    def find(self, name: Any) -> tuple[HostSupervisor, AgentRuntime]:
        if not isinstance(name, str):
            raise BadArguments("'agent' must be a string")
        for sup in self.supervisors.values():
            rt = sup.agents.get(name)
            if rt is not None:
                return sup, rt
        raise UnknownAgent(f"no agent named {name!r} in the roster", agent=name)

    def _describe(self, sup: HostSupervisor, rt: AgentRuntime) -> dict[str, Any]:
        """``describe`` plus the provider fleetd runs it on and its open drift."""
        row = sup.describe(rt)
        row["reported_provider"] = row.get("provider")
        row.update(self.providers.agent_row(rt.name))
        return row

    def all_agents(self) -> list[dict[str, Any]]:
        sups = self.supervisors.values()
        rows = [self._describe(sup, rt) for sup in sups for rt in sup.agents.values()]
        return sorted(rows, key=lambda r: (r["host"], r["name"]))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for sup in self.supervisors.values():
            for rt in sup.agents.values():
                # describe(): a federated host's agents are counted as its fleetd sees them.
                key = str(sup.describe(rt)["state"]).lower()
                out[key] = out.get(key, 0) + 1
        return out

    def status_line(self) -> str:
        c = self.counts()
        parts = [f"{c.get(s, 0)} {s}" for s in ("running", "starting", "backoff", "hung", "fatal")]
        extra = [
            f"{n} {s}"
            for s, n in sorted(c.items())
            if s not in ("running", "starting", "backoff", "hung", "fatal") and n
        ]
        line = ", ".join(parts + extra)
        if self.reload_error:
            line += " | last reload FAILED, old roster in force"
        return line

    # --- handlers ----------------------------------------------------------------

    async def handle(self, req: protocol.Request, uid: int) -> Any:
        a = req.args
        if req.cmd == "ping":
            return {
                "pid": os.getpid(),
                "version": __version__,
                "started": self.started_wall,
                "status": self.status_line(),
            }
        if req.cmd == "ps":
            rows = self.all_agents()
            if a.get("host"):
                rows = [r for r in rows if r["host"] == a["host"]]
            return {"agents": rows, "counts": self.counts()}
        if req.cmd == "show":
            sup, rt = self.find(a["agent"])
            detail = self._describe(sup, rt)
            detail["spec"] = rt.spec.model_dump(mode="json", exclude={"env"})
            detail["env_keys"] = sorted(rt.spec.env)
            detail["recent_events"] = [
                e.to_dict() for e in self.store.events(agent=rt.name, limit=10, newest=True)
            ]
            return detail
        if req.cmd == "logs":
            sup, rt = self.find(a["agent"])
            if isinstance(sup, FederatedSupervisor):
                forwarded = await sup.forward("logs", dict(a))
                if forwarded is not None:
                    return forwarded
            limit = _int_arg(a, "limit", 5, 1, 100)
            return {
                "agent": rt.name,
                "forensics": [f.to_dict() for f in self.store.forensics(rt.name, limit)],
            }
        if req.cmd == "events":
            limit = _int_arg(a, "limit", 100, 1, 10000)
            after = _int_arg(a, "after_id", 0, 0, 2**62)
            agent = a.get("agent")
            if agent is not None:
                self.find(agent)
            found = self.store.events(
                after_id=after, agent=agent, limit=limit, newest=after == 0, kinds=a.get("kinds")
            )
            return {"events": [e.to_dict() for e in found]}
        if req.cmd in ("report", "uptime"):
            return await self.history(req)
        if req.cmd == "hosts":
            return {
                "hosts": [
                    self._host_row(name, sup) for name, sup in sorted(self.supervisors.items())
                ]
            }
        if req.cmd in ("start", "stop", "restart", "pause", "resume"):
            sup, rt = self.find(a["agent"])
            self.bus.publish(
                "operator_command",
                f"uid {uid} ran {req.cmd} {rt.name}",
                host=sup.host.name,
                agent=rt.name,
                state=str(rt.agent.state),
                data={"uid": uid, "cmd": req.cmd},
            )
            result = await sup.command(rt.name, req.cmd, uid)
            if req.cmd == "resume":
                sup.wake()
            return result
        if req.cmd == "reload":
            self.bus.publish(
                "operator_command", f"uid {uid} ran reload", data={"uid": uid, "cmd": "reload"}
            )
            return await self.reload()
        if req.cmd in ("providers", "failover", "failback", "provider"):
            if req.definition.mutating:
                self.bus.publish(
                    "operator_command",
                    f"uid {uid} ran {req.cmd} {' '.join(str(v) for v in a.values())}",
                    agent=a.get("agent") if isinstance(a.get("agent"), str) else None,
                    data={"uid": uid, "cmd": req.cmd, **a},
                )
            return await self.providers.handle(req.cmd, a, uid)
        raise InvalidCommand(f"'{req.cmd}' is not available in this version of fleetd")

    async def history(self, req: protocol.Request) -> dict[str, Any]:
        """Report / uptime from the event store, computed in a worker thread on its
        own read connection so a long report never stalls supervision."""
        from fleetd.history import compute, last_days
        from fleetd.report import render_markdown, to_json, uptime_summary

        days = _int_arg(req.args, "days", 30, 1, 3660)
        agent = req.args.get("agent")
        if agent is not None:
            self.find(agent)
        self.store.run_seen(self.run_id, time.time())
        path = self.roster.settings.db_path
        targets = self.roster.targets
        names = sorted(self.roster.agents)

        def work() -> dict[str, Any]:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            conn.row_factory = sqlite3.Row
            try:
                h = compute(conn, *last_days(time.time(), days), targets, agents=names)
            finally:
                conn.close()
            if req.cmd == "uptime":
                return uptime_summary(h, agent)
            return {
                "report": to_json(h),
                "markdown": render_markdown(h, sparklines=True),
            }

        return await anyio.to_thread.run_sync(work)

    def _host_row(self, name: str, sup: HostSupervisor) -> dict[str, Any]:
        snap = sup.last_snapshot
        health = snap.health if snap else None
        return {
            **sup.watch.row(),  # connection, incidents, escalation (docs/remote.md)
            **(sup.fed_row() if isinstance(sup, FederatedSupervisor) else {}),
            "name": name,
            "kind": self.roster.hosts[name].kind,
            "state": sup.host_state(),
            "last_cycle": sup.last_cycle,
            "cycles": sup.cycles,
            "round_trips": sup.round_trips_at_cycle,
            "cycle_seconds": sup.last_cycle_duration,
            "agents": len(sup.agents),
            "incident": sup.host_incident,
            "health": None
            if health is None
            else {
                "disk_free_pct": health.disk_free_pct,
                "mem_available_pct": health.mem_available_pct,
                "load1": health.load1,
                "cpus": health.cpus,
            },
        }

    async def stream(self, req: protocol.Request, uid: int) -> AsyncIterator[dict[str, Any]]:
        agent = req.args.get("agent")
        if agent is not None:
            self.find(agent)
        live = self.bus.follow()
        after = _int_arg(req.args, "after_id", self.store.last_event_id(), 0, 2**62)
        last = after
        for row in self.store.events(after_id=after, agent=agent, limit=10000):
            last = row.id
            yield row.to_dict()
        async with live:
            async for event in live:
                if event["id"] <= last or (agent is not None and event["agent"] != agent):
                    continue
                yield event

    # --- reload ----------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        assert self.roster.path is not None
        try:
            new = check_roster(str(self.roster.path))
        except ConfigError as exc:
            self.reload_error = exc.message
            self.bus.publish(
                "reload_failed",
                f"roster reload refused, old roster stays: {exc.message}",
                alert=True,
                data={"error": exc.message},
            )
            raise
        self.reload_error = None
        async with self._reload_lock:  # SIGHUP and `fleetctl reload` never interleave
            return await self._apply_roster(new)

    async def _quiet_stop(self, sup: HostSupervisor, name: str) -> None:
        """Stop an agent that leaves this supervisor; best effort (its host may be
        unreachable), and the worker goes away either way."""
        try:
            rt = sup.agents[name]
            if rt.agent.state in (State.RUNNING, State.STARTING, State.HUNG):
                await sup.command(name, "stop", None)
        except FleetError as exc:
            log.warning("reload.stop.failed", agent=name, error=exc.message)
        await sup.stop_worker(name)

    async def _apply_roster(self, new: Roster) -> dict[str, Any]:
        old = self.roster
        added = [n for n in new.agents if n not in old.agents]
        removed = [n for n in old.agents if n not in new.agents]
        changed = [n for n in new.agents if n in old.agents and new.agents[n] != old.agents[n]]
        # The new roster is in force from here on; every step below is best effort,
        # so one unreachable host cannot leave the rest of the roster unapplied.
        self.roster = new
        for sup in self.supervisors.values():
            sup.roster = new
        self.providers.reload(new)
        for name in removed:
            sup, _ = self.find(name)
            await self._quiet_stop(sup, name)
            self.store.set_hold(name, None, time.time())
        for name in changed:
            sup, rt = self.find(name)
            spec = new.agents[name]
            if spec.host != rt.spec.host:
                await self._quiet_stop(sup, name)
                added.append(name)
                continue
            moved = (spec.tmux_socket, spec.tmux_session, spec.window) != (
                rt.spec.tmux_socket,
                rt.spec.tmux_session,
                rt.spec.window,
            )
            rt.spec = spec
            if moved:
                # A pane id is only meaningful on its own tmux server: never respawn
                # into the old id on the new socket (it may be another agent's pane).
                rt.pane = None
            if rt.agent.state in (State.RUNNING, State.STARTING, State.HUNG, State.BACKOFF):
                try:
                    await sup.command(name, "restart", None, reason="roster changed")
                except FleetError as exc:
                    log.warning("reload.restart.failed", agent=name, error=exc.message)
        for name in added:
            spec = new.agents[name]
            sup = await self._supervisor_for(spec)
            sup.add_agent(spec, sup.initial_agent(spec, {}, {}))
            sup.wake()
        self._drop_removed_hosts(new)
        result = {"added": sorted(added), "removed": sorted(removed), "changed": sorted(changed)}
        self.bus.publish(
            "reloaded",
            f"roster reloaded: {len(added)} added, {len(removed)} removed, {len(changed)} changed",
            data=result,
        )
        return result

    def _drop_removed_hosts(self, new: Roster) -> None:
        """A host gone from the roster (and so without agents) stops being watched;
        its open host incidents are closed rather than left open forever."""
        for name in [h for h in self.supervisors if h not in new.hosts]:
            sup = self.supervisors.pop(name)
            scope = self._scopes.pop(name, None)
            if scope is not None:
                scope.cancel()
            for inc in self.store.open_incidents():
                if inc["scope"] == "host" and inc["subject"] == name:
                    self.store.close_incident(inc["id"], time.time())
            self.bus.publish(
                "host_removed", f"host {name} left the roster; no longer watched", host=name
            )
            del sup

    async def _supervisor_for(self, spec: AgentSpec) -> HostSupervisor:
        sup = self.supervisors.get(spec.host)
        if sup is None:
            sup = self.new_supervisor(spec.host)
            self.supervisors[spec.host] = sup
            if self._tg is not None:
                await self._tg.start(self._run_supervisor, spec.host, sup)
        return sup


def _int_arg(args: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadArguments(f"'{key}' must be an integer between {lo} and {hi}")
    return value


async def self_heartbeat(fleet: Fleet, path: Path, interval: float, run_id: int) -> None:
    pid = os.getpid()
    while True:
        try:
            write_self_heartbeat(path, time.time(), pid, "running")
            fleet.store.run_seen(run_id, time.time())
        except (OSError, FleetError) as exc:
            log.warning("fleetd.heartbeat.failed", error=str(exc))
        await anyio.sleep(interval)


async def serve(roster: Roster) -> int:
    settings = roster.settings
    lock = Lock.acquire(settings.lock_path)
    store = Store(settings.db_path)
    bus = EventBus(store)
    if settings.journal:
        # Events go to journald as structured entries (stderr when there is none).
        bus.sinks.append(AlertSink(JournalWriter(str(settings.journal_socket))).emit)
    else:
        bus.sinks.append(_log_sink)
    notifier = Notifier.from_env(os.environ, os.getpid())
    run_id = store.run_started(os.getpid(), time.time())
    fleet = Fleet(roster, store, bus, notifier)
    fleet.run_id = run_id
    fleet.build()
    server = ControlServer(
        settings.socket_path,
        fleet.handle,
        fleet.stream,
        max_bytes=settings.request_max_bytes,
        timeout=settings.request_timeout,
        mode=settings.socket_mode,
        operators=settings.operators,
    )
    bus.publish(
        "fleetd_started",
        f"fleetd {__version__} started (pid {os.getpid()}) with {len(roster.agents)} agent(s)",
        data={"pid": os.getpid()},
    )
    try:
        async with anyio.create_task_group() as tg:
            await fleet.start(tg)
            await tg.start(fleet.providers.run)
            await tg.start(server.serve)
            tg.start_soon(compact_history, settings.db_path, settings.retention_days)
            tg.start_soon(
                self_heartbeat,
                fleet,
                settings.self_heartbeat_path,
                settings.self_heartbeat_interval,
                run_id,
            )
            if settings.metrics_address or settings.metrics_textfile:
                await tg.start(_metrics, fleet)
            # READY only now: roster loaded, store open, agents adopted, socket listening.
            notifier.ready(fleet.status_line())
            log.info(
                "fleetd.ready",
                agents=len(roster.agents),
                socket=str(settings.socket_path),
                status=fleet.status_line(),
            )
            await _signals(fleet, tg)
    finally:
        notifier.stopping()
        store.run_stopped(run_id, time.time())
        bus.publish(
            "fleetd_stopped", "fleetd stopped; agents left running", data={"pid": os.getpid()}
        )
        bus.close()
        store.close()
        settings.socket_path.unlink(missing_ok=True)
        lock.release()
    return 0


async def _signals(fleet: Fleet, tg: anyio.abc.TaskGroup) -> None:
    with anyio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        interrupts = 0
        async for signum in signals:
            if signum == signal.SIGHUP:
                fleet.notifier.reloading(time.monotonic_ns() // 1000)
                try:
                    await fleet.reload()
                except FleetError as exc:
                    log.error("fleetd.reload.refused", error=exc.message)
                fleet.notifier.ready(fleet.status_line())
                continue
            if signum == signal.SIGINT:
                interrupts += 1
                if interrupts > 1:
                    log.warning("fleetd.exit.forced")
                    os._exit(130)
            log.info("fleetd.stopping", signal=signal.Signals(signum).name)
            tg.cancel_scope.cancel()
            return


COMPACT_EVERY = 6 * 3600.0


async def compact_history(db_path: Path, retention_days: int) -> None:
    """Fold raw events older than the retention into daily rollups, now and every few
    hours, on its own connection in a worker thread (minutes on a big store must not
    stall supervision). Reports over the kept window are unchanged by it."""
    from fleetd.history import compact

    def work() -> int:
        conn = sqlite3.connect(db_path, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            target = time.time() - retention_days * 86400.0
            row = conn.execute("SELECT MIN(ts) FROM events WHERE agent IS NOT NULL").fetchone()
            step = row[0] if row and row[0] is not None else target
            folded = 0
            # One day per transaction: the daemon's own writes wait at most that long.
            while step < target:
                step = min(target, step + 86400.0)
                folded += compact(conn, step)
            return folded
        finally:
            conn.close()

    while True:
        try:
            folded = await anyio.to_thread.run_sync(work)
            if folded:
                log.info("history.compacted", rows=folded, retention_days=retention_days)
        except sqlite3.Error as exc:
            log.warning("history.compact.failed", error=str(exc))
        await anyio.sleep(COMPACT_EVERY)


async def _metrics(
    fleet: Fleet, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Refresh the Prometheus figures every cycle interval; serve or write them."""
    from fleetd.metrics import Metrics

    metrics = Metrics()
    settings = fleet.roster.settings
    async with anyio.create_task_group() as tg:
        if settings.metrics_address:
            await tg.start(metrics.serve, settings.metrics_address)
        task_status.started()
        seen = fleet.store.last_event_id()
        while True:
            fleet.update_metrics(metrics, seen)
            seen = fleet.store.last_event_id()
            if settings.metrics_textfile:
                try:
                    metrics.write_textfile(settings.metrics_textfile)
                except OSError as exc:
                    log.warning("metrics.textfile.failed", error=str(exc))
            await anyio.sleep(settings.poll_interval)


def _log_sink(event: dict[str, Any]) -> None:
    level = "warning" if event.get("alert") else "info"
    getattr(log, level)(
        f"event.{event['kind']}",
        agent=event.get("agent"),
        host=event.get("host"),
        state=event.get("state"),
        message=event.get("message"),
    )


def _use_pidfd_child_watcher() -> None:
    """On Python 3.11 asyncio waits for each child (every tmux call) with a thread of
    its own; a pidfd watcher waits in the event loop instead. 3.12+ does this itself."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    import asyncio
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetd", description="Supervise a fleet of AI agents.")
    parser.add_argument(
        "--config",
        "-c",
        default=os.environ.get("FLEETD_CONFIG", "/etc/fleetd/fleetd.toml"),
        help="roster file (default: $FLEETD_CONFIG or /etc/fleetd/fleetd.toml)",
    )
    parser.add_argument("--check", metavar="CONFIG", help="validate a roster and exit")
    parser.add_argument("--version", action="version", version=f"fleetd {__version__}")
    args = parser.parse_args(argv)
    if args.check:
        try:
            roster = check_roster(args.check)
        except ConfigError as exc:
            print(f"fleetd: invalid roster:\n{exc.message}", file=sys.stderr)
            return exc.exit_status
        print(f"{args.check}: OK ({len(roster.agents)} agents on {len(roster.hosts)} host(s))")
        return 0
    try:
        roster = check_roster(args.config)
    except ConfigError as exc:
        print(f"fleetd: invalid roster, not starting:\n{exc.message}", file=sys.stderr)
        return exc.exit_status
    configure_logging(roster.settings.log_format)
    _use_pidfd_child_watcher()
    try:
        return anyio.run(serve, roster)
    except FleetError as exc:
        print(f"fleetd: {exc.message}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
