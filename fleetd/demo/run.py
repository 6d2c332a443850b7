"""The demo runner behind ``scripts/demo``: a misbehaving fleet, fleetd supervising it, on screen.

It builds a private directory (state, runtime, heartbeats, its own ``TMUX_TMPDIR``
and tmux socket name), starts two provider stand-ins (:mod:`fleetd.demo.provider`),
renders the roster template ``roster.toml`` with absolute paths and their ports,
starts a real ``fleetd`` on it, and then every few seconds shows ``fleetctl ps``,
``fleetctl providers`` and the latest events. When an agent has sat in FATAL for
a while it runs ``fleetctl restart`` on it, to show that command.

It ends on Ctrl-C, SIGTERM, SIGHUP or after ``--duration`` seconds, and then it
always cleans up, in this order: fleetd (SIGTERM; it leaves agents running by
design), the demo's tmux server and every process under it, the provider
stand-ins, and finally any process whose environment or command line still
points into the demo directory. Everything is killed by pid, never by name.
Signal handlers only record the signal (a second Ctrl-C cannot interrupt the
clean-up), and every wait is bounded. Then it prints a summary from fleetd's
event store: deaths, hangs, respawns, failovers and the measured
death/hang -> respawn times.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import json
import os
import shutil
import signal
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from fleetd.cli import render_event, render_providers, render_ps
from fleetd.control.client import Client
from fleetd.errors import FleetError

# The primary provider's schedule: up this long, then down (503) this long, repeating.
PRIMARY_UP = 25.0
PRIMARY_DOWN = 12.0
# An agent in FATAL this long is revived with `fleetctl restart` (the operator's move).
REVIVE_AFTER = 10.0
EVENTS_SHOWN = 12
# Frequent, low-information kinds left out of the on-screen event list (still in the store).
QUIET_KINDS = frozenset({"agent_busy", "agent_idle"})
DEATH_KINDS = ("agent_dead", "agent_hung")
# Kinds after which a death is no longer fleetd's to respawn (FATAL, or an operator acted).
# (ts, kind, agent, alert) of one stored event.
EventTuple = tuple[float, str, str | None, bool]
PARK_KINDS = ("agent_fatal", "agent_restart_requested", "agent_start_requested")

HEADLINE = (
    "crashy exits every 10-20 s; hangy stops heartbeating after ~15 s; flappy crash-loops "
    "into FATAL and the demo revives it with `fleetctl restart`; drifter runs a model the "
    f"roster does not declare; the primary provider is down {PRIMARY_DOWN:.0f} s of every "
    f"{PRIMARY_UP + PRIMARY_DOWN:.0f} s, so coder-a and coder-b fail over to fallback and back."
)

# Values for etc/demo.toml, the roster as shipped for running by hand.
HAND_VALUES: dict[str, str] = {
    "python": "python3",
    "root": "/tmp/fleetd-demo",
    "tmux_socket": "fleetd-demo",
    "primary_url": "http://127.0.0.1:18401",
    "fallback_url": "http://127.0.0.1:18402",
}


# --- the roster ---------------------------------------------------------------------


def roster_template() -> str:
    return (importlib.resources.files("fleetd.demo") / "roster.toml").read_text(encoding="utf-8")


def _toml_escape(value: str) -> str:
    # Every placeholder sits inside a TOML basic string (or a comment).
    return value.replace("\\", "\\\\").replace('"', '\\"')


def render_roster(values: Mapping[str, str], template: str | None = None) -> str:
    """The demo roster with ``values`` filled in; template-only ``#!`` lines dropped.

    Raises KeyError if a placeholder has no value (the template and this module
    must agree on the names).
    """
    text = roster_template() if template is None else template
    kept = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#!"))
    return string.Template(kept).substitute({k: _toml_escape(v) for k, v in values.items()})


# --- the demo's processes ---------------------------------------------------------------


@dataclass
class StopFlag:
    """Set by signal handlers; the main loop and the clean-up read it.

    Handlers never raise, so a second Ctrl-C cannot cut the clean-up short.
    """

    requested: bool = False
    signals: int = 0
    why: str = ""

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if not self.requested:
            self.requested = True
            self.why = signal.Signals(signum).name
        else:
            # os.write: print() is not safe inside a handler that may interrupt print().
            with contextlib.suppress(OSError):
                os.write(2, b"\nfleetd demo: still cleaning up, one moment...\n")

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.handler)


def _ancestors() -> set[int]:
    out = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        out.update(p.pid for p in psutil.Process().parents())
    return out


def _terminate(procs: Iterable[psutil.Process], timeout: float = 3.0) -> int:
    """SIGTERM, wait up to ``timeout``, SIGKILL what is left; returns how many there were."""
    procs = list(procs)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return len(procs)


@dataclass
class Demo:
    root: Path
    python: str = sys.executable
    refresh: float = 2.0
    tty: bool = False
    tmux_socket: str = field(default_factory=lambda: f"fleetd-demo-{uuid.uuid4().hex[:6]}")
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    seen_pids: dict[str, list[int]] = field(default_factory=dict)
    started_wall: float = field(default_factory=time.time)
    ready_wall: float | None = None
    notes: list[str] = field(default_factory=list)
    fatal_since: dict[str, float] = field(default_factory=dict)
    agent_names: list[str] = field(default_factory=list)
    primary_outages: int = 0
    _primary_was_up: bool = True

    # paths ------------------------------------------------------------------------

    @property
    def tmux_tmpdir(self) -> Path:
        return self.root / "tmux"

    @property
    def socket_path(self) -> Path:
        return self.root / "run" / "control.sock"

    @property
    def db_path(self) -> Path:
        return self.root / "state" / "events.sqlite3"

    @property
    def roster_path(self) -> Path:
        return self.root / "fleetd.toml"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TMUX_TMPDIR"] = str(self.tmux_tmpdir)
        # Never join the user's own tmux or systemd session.
        for key in ("TMUX", "TMUX_PANE", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(key, None)
        # FLEETD_* settings in the user's environment would override the demo roster.
        for key in [k for k in env if k.startswith("FLEETD_")]:
            env.pop(key)
        return env

    def fleetctl_hint(self) -> str:
        exe = Path(self.python).parent / "fleetctl"
        cmd = str(exe) if exe.exists() else f"{self.python} -m fleetd.cli"
        return f"{cmd} --socket {self.socket_path}"

    def attach_hint(self) -> str:
        return f"TMUX_TMPDIR={self.tmux_tmpdir} tmux -L {self.tmux_socket} attach"

    # start ------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - closed below
        try:
            # Own session: the terminal's Ctrl-C reaches only the runner, which then
            # stops everything in order.
            proc = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.root,
            )
        finally:
            log.close()
        self.children[name] = proc
        self.save_pids()
        return proc

    def save_pids(self) -> None:
        doc = {
            "runner": os.getpid(),
            "children": {n: p.pid for n, p in self.children.items()},
            "seen": self.seen_pids,
            "tmux_socket": self.tmux_socket,
            "tmux_tmpdir": str(self.tmux_tmpdir),
        }
        tmp = self.root / "pids.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.root / "pids.json")

    def _remember(self, what: str, pid: int | None) -> None:
        if pid and pid not in self.seen_pids.setdefault(what, []):
            self.seen_pids[what].append(pid)
            self.save_pids()

    def prepare(self) -> None:
        for sub in ("tmux", "state", "run", "hb", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.tmux_tmpdir.chmod(0o700)

    def start_providers(self, timeout: float = 15.0) -> dict[str, str]:
        schedules = {"primary": (PRIMARY_UP, PRIMARY_DOWN), "fallback": (3600.0, 0.0)}
        for name, (up, down) in schedules.items():
            port_file = self.root / "run" / f"{name}.port"
            argv = [self.python, "-m", "fleetd.demo.provider", "--name", name]
            argv += ["--port", "0", "--port-file", str(port_file), "--up", str(up)]
            argv += ["--down", str(down)]
            self._spawn(f"provider-{name}", argv)
        urls: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        for name in schedules:
            port_file = self.root / "run" / f"{name}.port"
            while not port_file.exists():
                proc = self.children[f"provider-{name}"]
                if proc.poll() is not None:
                    raise RuntimeError(f"provider stand-in {name} exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"provider stand-in {name} did not start in {timeout} s")
                time.sleep(0.05)
            urls[name] = f"http://127.0.0.1:{int(port_file.read_text())}"
        return urls

    def write_roster(self, urls: Mapping[str, str]) -> None:
        text = render_roster(
            {
                "python": self.python,
                "root": str(self.root),
                "tmux_socket": self.tmux_socket,
                "primary_url": urls["primary"],
                "fallback_url": urls["fallback"],
            }
        )
        self.roster_path.write_text(text, encoding="utf-8")
        from fleetd.daemon import check_roster  # validates exactly as fleetd will

        roster = check_roster(str(self.roster_path))
        self.agent_names = sorted(roster.agents)

    def start_fleetd(self, stop: StopFlag, timeout: float = 30.0) -> bool:
        proc = self._spawn(
            "fleetd", [self.python, "-m", "fleetd", "--config", str(self.roster_path)]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop.requested:
            if proc.poll() is not None:
                raise RuntimeError(f"fleetd exited with status {proc.returncode} at start-up")
            try:
                self.call("ping", timeout=2.0)
            except FleetError:
                time.sleep(0.1)
                continue
            self.ready_wall = time.time()
            return True
        if stop.requested:
            return False
        raise RuntimeError(f"fleetd did not answer on {self.socket_path} within {timeout} s")

    def call(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
        with Client(self.socket_path, timeout=timeout) as client:
            return client.call(cmd, args)

    # the screen -------------------------------------------------------------------

    def provider_line(self) -> str:
        parts = []
        for name in ("primary", "fallback"):
            port_file = self.root / "run" / f"{name}.port"
            try:
                url = f"http://127.0.0.1:{int(port_file.read_text())}/status"
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    doc = json.loads(resp.read())
            except (OSError, ValueError):
                parts.append(f"{name} not answering")
                continue
            if name == "primary":
                if self._primary_was_up and not doc["up"]:
                    self.primary_outages += 1
                self._primary_was_up = bool(doc["up"])
            state = "UP" if doc["up"] else "DOWN (503)"
            change = doc.get("changes_in")
            if change is not None:
                state += f", {'goes down' if doc['up'] else 'back'} in {change:.0f} s"
            parts.append(f"{name} {state}")
        return "provider stand-ins: " + "; ".join(parts)

    def frame(self, remaining: float | None) -> str:
        """One screen: what is going on, how to look closer, then fleetctl's views.

        On a terminal the header is wrapped (it holds the commands to copy), the
        tables are cut at the terminal's width, and the event list gets the rows
        that are left, so the screen does not scroll.
        """
        size = shutil.get_terminal_size((120, 40)) if self.tty else os.terminal_size((0, 0))
        elapsed = time.time() - (self.ready_wall or self.started_wall)
        left = "" if remaining is None else f", ends by itself in {max(0, remaining):.0f} s"
        head = [
            f"fleetd demo - {int(elapsed) // 60}:{int(elapsed) % 60:02d} elapsed{left}"
            " - Ctrl-C stops it and cleans up",
            *(textwrap.wrap(HEADLINE, size.columns) if self.tty else [HEADLINE]),
            f"watch the agents (detach: Ctrl-b d): {self.attach_hint()}",
            f"ask fleetd: {self.fleetctl_hint()} ps | events | logs crashy | show hangy",
            "",
        ]
        body: list[str] = []
        events: list[str] = []
        try:
            ps = self.call("ps")
            for row in ps["agents"]:
                self._remember(row["name"], row.get("pid"))
                if row["state"] == "FATAL":
                    self.fatal_since.setdefault(row["name"], time.monotonic())
                else:
                    self.fatal_since.pop(row["name"], None)
            body += ["$ fleetctl ps", render_ps(ps), ""]
            with contextlib.suppress(FleetError):  # an older fleetd has no 'providers'
                body += ["$ fleetctl providers", render_providers(self.call("providers")), ""]
            body += [self.provider_line(), ""]
            found = self.call("events", {"limit": 200})["events"]
            events = [
                render_event(e)
                for e in sorted(found, key=lambda e: e["id"])
                if e["kind"] not in QUIET_KINDS
            ]
        except FleetError as exc:
            body.append(f"fleetd does not answer: {exc.message}")
        notes = ["", *self.notes[-3:]] if self.notes else []
        body = "\n".join(body).splitlines()
        shown = EVENTS_SHOWN
        if self.tty:
            head_rows = sum(max(1, -(-len(line) // size.columns)) for line in head)
            spare = size.lines - head_rows - len(body) - len(notes) - 2
            shown = max(3, min(EVENTS_SHOWN, spare))
            body = [line[: size.columns] for line in body]
        tail = [f"$ fleetctl events   (last {shown}; busy/idle left out)", *events[-shown:]]
        if self.tty:
            tail = [line[: size.columns] for line in tail]
        return "\n".join(head + body + tail + notes)

    def revive_fatal(self) -> None:
        """Run `fleetctl restart` on agents that have been FATAL for REVIVE_AFTER seconds."""
        now = time.monotonic()
        for name, since in list(self.fatal_since.items()):
            if now - since < REVIVE_AFTER:
                continue
            argv = [self.python, "-m", "fleetd.cli", "--socket", str(self.socket_path)]
            try:
                res = subprocess.run(
                    [*argv, "restart", name],
                    capture_output=True,
                    text=True,
                    timeout=15,
                    env=self.env,
                    check=False,
                    start_new_session=True,
                )
                said = (res.stdout or res.stderr).strip()
            except subprocess.TimeoutExpired:
                said = "no answer within 15 s"
            stamp = time.strftime("%H:%M:%S")
            self.notes.append(
                f"demo {stamp}: {name} was FATAL for {now - since:.0f} s -> "
                f"ran `fleetctl restart {name}`: {said}"
            )
            self.fatal_since.pop(name, None)

    # stop -------------------------------------------------------------------------

    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                ["tmux", "-L", self.tmux_socket, *args],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None

    def tmux_server(self) -> psutil.Process | None:
        res = self._tmux("display-message", "-p", "#{pid}")
        if res is None or res.returncode != 0 or not res.stdout.strip().isdigit():
            return None
        try:
            return psutil.Process(int(res.stdout.strip()))
        except psutil.Error:
            return None

    def _stop_child(self, name: str, timeout: float) -> None:
        proc = self.children.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def belongs(self, p: psutil.Process) -> bool:
        """True if ``p``'s command line or environment points into the demo directory.

        Checked before killing a pid the demo only remembers (an agent seen in
        ``ps``): by then that pid may belong to someone else.
        """
        root = str(self.root)
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                return False
            if root in " ".join(p.cmdline()):
                return True
            env = p.environ()
        except psutil.Error:
            return False
        return env.get("TMUX_TMPDIR") == str(self.tmux_tmpdir) or env.get(
            "FLEETD_HEARTBEAT_FILE", ""
        ).startswith(root + os.sep)

    def _strays(self) -> list[psutil.Process]:
        """Processes (not us, not our parents) that still belong to the demo."""
        mine = _ancestors()
        return [p for p in psutil.process_iter() if p.pid not in mine and self.belongs(p)]

    def cleanup(self) -> list[str]:
        """Stop everything the demo started, by pid. Returns what it did, for the log."""
        done = []
        # 1. fleetd first, so it does not respawn what is about to be killed.
        self._stop_child("fleetd", timeout=15)
        done.append("fleetd stopped")
        # 2. The tmux server and everything under it (agents, hung ones included).
        server = self.tmux_server()
        victims: list[psutil.Process] = []
        if server is not None:
            self._remember("tmux", server.pid)
            with contextlib.suppress(psutil.Error):
                victims = server.children(recursive=True)
            self._tmux("kill-server")
            victims.append(server)
        for pids in self.seen_pids.values():
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(pid)
                    if p not in victims and p.pid not in _ancestors() and self.belongs(p):
                        victims.append(p)
        if victims:
            _terminate(victims)
        done.append(f"tmux server -L {self.tmux_socket} and its panes stopped")
        # 3. The provider stand-ins.
        for name in list(self.children):
            if name.startswith("provider-"):
                self._stop_child(name, timeout=5)
        done.append("provider stand-ins stopped")
        # 4. A last sweep: anything still pointing into the demo directory.
        strays = self._strays()
        if strays:
            _terminate(strays)
            done.append(f"{len(strays)} stray process(es) killed: {[p.pid for p in strays]}")
        return done


# --- summary from the event store ----------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    counts: dict[str, int]
    respawn_times: list[float]
    parked: int  # deaths followed by FATAL or an operator command before any respawn
    unanswered: int  # deaths with no respawn before the demo ended
    outages: int  # provider_down events that opened an outage (relapses are not alerts)
    # The same times split by what started them: "agent_dead" / "agent_hung".
    by_kind: dict[str, list[float]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        c = self.counts
        out = [
            f"deaths detected: {c.get('agent_dead', 0)}   hangs detected: "
            f"{c.get('agent_hung', 0)}   respawned after a death or hang: "
            f"{len(self.respawn_times)}   parked in FATAL: {c.get('agent_fatal', 0)}   "
            f"operator commands: {c.get('operator_command', 0)}",
            f"provider outages: {self.outages}   failovers: "
            f"{c.get('failover', 0)}   failbacks: {c.get('failback', 0)}   drift alerts: "
            f"{c.get('drift_detected', 0)}",
        ]
        if self.respawn_times:
            out.append(f"death/hang -> respawn: {_stats(self.respawn_times)}")
            labels = {"agent_dead": "  after a death", "agent_hung": "  after a hang "}
            for kind, label in labels.items():
                if self.by_kind.get(kind):
                    out.append(f"{label}: {_stats(self.by_kind[kind])}")
            out.append(
                "  (measured from the event store: a death is dated when the process died, a"
                " hang when its heartbeat deadline passed; includes the backoff delay and, for"
                " a hang, the TERM/KILL of the hung process)"
            )
        extra = []
        if self.parked:
            extra.append(f"{self.parked} not respawned because the agent was parked in FATAL")
        if self.unanswered:
            extra.append(f"{self.unanswered} still waiting for a respawn when the demo ended")
        if extra:
            out.append("(" + "; ".join(extra) + ")")
        return out


def summarize(rows: Sequence[EventTuple]) -> Summary:
    """Counts per kind and death/hang -> next agent_started times, from store rows.

    Rows must be in event order. A death followed by agent_fatal, or by an operator
    start/restart, before any agent_started is not a measured respawn (fleetd did
    not respawn it on its own).
    """
    counts: dict[str, int] = {}
    open_deaths: dict[str, tuple[float, str]] = {}
    times: list[float] = []
    by_kind: dict[str, list[float]] = {}
    parked = outages = 0
    for ts, kind, agent, alert in rows:
        counts[kind] = counts.get(kind, 0) + 1
        outages += kind == "provider_down" and alert
        if agent is None:
            continue
        if kind in DEATH_KINDS:
            # A hang followed by the kill's death is one incident: keep the first time.
            open_deaths.setdefault(agent, (ts, kind))
        elif kind == "agent_started" and agent in open_deaths:
            since, cause = open_deaths.pop(agent)
            times.append(max(0.0, ts - since))
            by_kind.setdefault(cause, []).append(times[-1])
        elif kind in PARK_KINDS and open_deaths.pop(agent, None) is not None:
            parked += 1
    return Summary(counts, times, parked, len(open_deaths), outages, by_kind)


def _stats(values: Sequence[float]) -> str:
    ordered = sorted(values)
    return f"median {statistics.median(ordered):.2f} s, max {ordered[-1]:.2f} s over {len(ordered)}"


def read_events(db: Path) -> list[EventTuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        query = "SELECT ts, kind, agent, alert FROM events ORDER BY id"
        return [
            (float(ts), str(kind), agent, bool(alert))
            for ts, kind, agent, alert in conn.execute(query)
        ]
    finally:
        conn.close()


def history_report(db: Path, roster_path: Path, start: float, end: float) -> str:
    """The phase report over the demo's run, or why it is not available."""
    try:
        from fleetd.config import load_roster
        from fleetd.history import compute
        from fleetd.report import render_markdown
    except ImportError as exc:
        return f"(no history report: this fleetd has no history/report module: {exc})"
    roster = load_roster(roster_path)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        hist = compute(conn, start, end, roster.targets, agents=sorted(roster.agents))
    except sqlite3.OperationalError:
        conn.close()
        # compute() creates its indexes on first use, which a read-only handle refuses.
        conn = sqlite3.connect(db, timeout=5)
        hist = compute(conn, start, end, roster.targets, agents=sorted(roster.agents))
    finally:
        conn.close()
    return render_markdown(hist, sparklines=False)


# --- main -------------------------------------------------------------------------------


def _sleep_until(deadline: float, stop: StopFlag) -> None:
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def say(text: str, *, err: bool = False) -> None:
    """Print, ignoring a closed terminal or pipe: output must never stop the clean-up."""
    with contextlib.suppress(OSError, ValueError):
        stream = sys.stderr if err else sys.stdout
        stream.write(text + "\n")
        stream.flush()


def _show(demo: Demo, remaining: float | None) -> None:
    screen = demo.frame(remaining)
    if demo.tty:
        say("\033[H\033[2J" + screen)  # home + clear: one steady screen
    else:
        say(f"\n===== {time.strftime('%H:%M:%S')} =====\n{screen}")


def run(args: argparse.Namespace) -> int:
    stop = StopFlag()
    stop.install()
    made_root = args.dir is None
    root = Path(tempfile.mkdtemp(prefix="fleetd-demo-")) if made_root else Path(args.dir)
    root = root.resolve()
    demo = Demo(root=root, refresh=args.refresh, tty=sys.stdout.isatty())
    status = 0
    stopped_wall = time.time()
    try:
        demo.prepare()
        say(f"fleetd demo: starting in {root} ...")
        demo.write_roster(demo.start_providers())
        ready = demo.start_fleetd(stop)
        end = None if args.duration is None else time.monotonic() + args.duration
        while ready and not stop.requested:
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                stop.why = f"--duration {args.duration:g} s elapsed"
                break
            demo.revive_fatal()
            _show(demo, remaining)
            fleetd = demo.children["fleetd"]
            if fleetd.poll() is not None:
                say(f"fleetd exited unexpectedly (status {fleetd.returncode})")
                status = 1
                break
            nxt = time.monotonic() + demo.refresh
            _sleep_until(nxt if end is None else min(nxt, end), stop)
    except (RuntimeError, FleetError, OSError) as exc:
        say(f"fleetd demo: {exc}", err=True)
        status = 1
    finally:
        stopped_wall = time.time()
        say(f"\nfleetd demo: stopping ({stop.why or 'done'}), cleaning up ...")
        for line in demo.cleanup():
            say(f"  {line}")
    if status:
        with contextlib.suppress(OSError):
            tail = (root / "logs" / "fleetd.log").read_text(errors="replace").splitlines()[-30:]
            say("last lines of fleetd's log:\n" + "\n".join(tail))
    _print_summary(demo, stopped_wall)
    if made_root and not args.keep and status == 0:
        shutil.rmtree(root, ignore_errors=True)
    else:
        say(f"\ndemo files kept in {root} (roster, logs, event store)")
    return status


def _print_summary(demo: Demo, end: float) -> None:
    if not demo.db_path.exists():
        return
    try:
        summary = summarize(read_events(demo.db_path))
    except sqlite3.Error as exc:
        say(f"no summary: cannot read {demo.db_path}: {exc}")
        return
    say("\n== what fleetd did")
    for line in summary.lines():
        say(line)
    if demo.primary_outages and not summary.counts.get("provider_down"):
        say("(the primary stand-in went down, but this fleetd recorded no provider_down)")
    say("\n== report (fleetd.history + fleetd.report over the demo's event store)\n")
    start = demo.ready_wall or demo.started_wall
    try:
        say(history_report(demo.db_path, demo.roster_path, start, end))
    except (sqlite3.Error, FleetError, ValueError) as exc:
        say(f"(no history report: {exc})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Run fleetd on a small demo fleet that crashes, hangs, drifts and loses "
        "its provider; Ctrl-C stops it and removes every process it started.",
    )
    p.add_argument("--duration", type=float, help="stop by itself after this many seconds (exit 0)")
    p.add_argument("--refresh", type=float, default=2.0, help="seconds between screens")
    p.add_argument("--dir", help="demo directory (default: a new /tmp/fleetd-demo-*; kept)")
    p.add_argument("--keep", action="store_true", help="keep the demo directory afterwards")
    p.add_argument(
        "--print-roster",
        action="store_true",
        help="print the demo roster for running by hand (etc/demo.toml) and exit",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_roster:
        sys.stdout.write(render_roster(HAND_VALUES))
        return 0
    if args.duration is not None and args.duration <= 0:
        print("scripts/demo: --duration must be positive", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
