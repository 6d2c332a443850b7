"""A real fleetd in a throwaway directory, for integration tests.

Each harness has its own state/runtime directories, its own TMUX_TMPDIR and tmux
socket name, runs ``python -m fleetd`` as a child process and talks to it through
the real control socket. Teardown stops fleetd and kills the tmux server and
every process it started, by pid, whatever the test did.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleetd.config import toml_value
from fleetd.control.client import Client

PY = sys.executable
AGENT = [PY, "-m", "fleetd.demo_agent"]


def wait_for(
    cond: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or cond!r} (last={last!r})")


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket_name = f"ft{uuid.uuid4().hex[:8]}"
        self.tmux_tmpdir = root / "tmux"
        self.tmux_tmpdir.mkdir()
        self.state_dir = root / "state"
        self.run_dir = root / "run"
        self.hb = root / "hb"
        self.hb.mkdir()
        self.roster = root / "fleetd.toml"
        self.log = root / "fleetd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, dict[str, Any]] = {}
        self.settings: dict[str, Any] = {"poll_interval": "1s", "self_heartbeat_interval": "1s"}
        self.defaults: dict[str, Any] = {
            "heartbeat_interval": "0.5s",
            "staleness_factor": 3,
            "recovery_settle": "1s",
            "stop_timeout": "2s",
            "backoff": {"initial": "0.3s", "factor": 2.0, "cap": "2s", "jitter": 0.1},
            "intensity": {"max_restarts": 5, "window": "60s"},
        }
        self.extra_env: dict[str, str] = {}

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TMUX_TMPDIR"] = str(self.tmux_tmpdir)
        env.pop("TMUX", None)
        env.pop("NOTIFY_SOCKET", None)
        env.update(self.extra_env)
        return env

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "control.sock"

    def add_agent(self, name: str, args: list[str] | None = None, **fields: Any) -> None:
        body: dict[str, Any] = {
            "command": [*AGENT, *(args or [])],
            "workdir": str(self.root),
            "heartbeat_file": str(self.hb / "{agent}.hb"),
        }
        body.update(fields)
        self.agents[name] = body

    def write_roster(self, text: str | None = None) -> None:
        if text is None:
            lines = ["[settings]"]
            settings = {
                "state_dir": str(self.state_dir),
                "runtime_dir": str(self.run_dir),
                **self.settings,
            }
            lines += [f"{k} = {toml_value(v)}" for k, v in settings.items()]
            lines.append("\n[defaults]")
            defaults = {"tmux_socket": self.socket_name, **self.defaults}
            lines += [f"{k} = {toml_value(v)}" for k, v in defaults.items()]
            for name, body in self.agents.items():
                lines.append(f'\n[agents."{name}"]')
                lines += [f"{k} = {toml_value(v)}" for k, v in body.items() if v is not None]
            text = "\n".join(lines) + "\n"
        self.roster.write_text(text)

    # --- process control ------------------------------------------------------

    def start(self, wait: bool = True) -> subprocess.Popen[bytes]:
        if not self.roster.exists():
            self.write_roster()
        logf = open(self.log, "ab")  # closed below, once the child has its copy
        self.proc = subprocess.Popen(
            [PY, "-m", "fleetd", "--config", str(self.roster)],
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        if wait:
            wait_for(self._answers, 20, what=f"fleetd to answer (log: {self.log_text()[-2000:]})")
        return self.proc

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"fleetd exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            self.call("ping")
        except Exception:
            return False
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- talking to it -----------------------------------------------------------

    def call(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        with Client(self.socket_path, timeout=timeout) as c:
            return c.call(cmd, args)

    def ctl(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "fleetd.cli", "--socket", str(self.socket_path), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )

    def agent(self, name: str) -> dict[str, Any]:
        return dict(self.call("show", {"agent": name}))

    def state(self, name: str) -> str:
        return str(self.agent(name)["state"])

    def events(
        self, agent: str | None = None, kinds: list[str] | None = None
    ) -> list[dict[str, Any]]:
        args: dict[str, Any] = {"limit": 10000, "after_id": 0}
        if agent:
            args["agent"] = agent
        if kinds:
            args["kinds"] = kinds
        return list(self.call("events", args)["events"])

    def store_events(self) -> list[tuple[str, str | None, str]]:
        """(kind, agent, message) straight from the SQLite store, fleetd running or not."""
        db = sqlite3.connect(self.state_dir / "events.sqlite3")
        try:
            return list(db.execute("SELECT kind, agent, message FROM events ORDER BY id"))
        finally:
            db.close()

    def wait_state(self, name: str, *states: str, timeout: float = 20.0) -> dict[str, Any]:
        return dict(
            wait_for(
                lambda: (a := self.agent(name))["state"] in states and a,
                timeout,
                what=f"{name} in {states}",
            )
        )

    def wait_event(
        self, kind: str, agent: str | None = None, count: int = 1, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        return list(
            wait_for(
                lambda: len(ev := self.events(agent, [kind])) >= count and ev,
                timeout,
                what=f"{count} x {kind} for {agent}",
            )
        )

    # --- tmux -----------------------------------------------------------------

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket_name, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=10,
            check=False,
        )

    def tmux_server_pid(self) -> int | None:
        res = self.tmux("display-message", "-p", "#{pid}")
        return int(res.stdout.strip()) if res.returncode == 0 and res.stdout.strip() else None

    def pane_pids(self) -> dict[str, int]:
        res = self.tmux("list-panes", "-a", "-F", "#{@fleetd_agent} #{pane_pid} #{pane_dead}")
        out = {}
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "0":
                out[parts[0]] = int(parts[1])
        return out

    def processes_of(self, name: str) -> list[psutil.Process]:
        """Live processes running this agent (by FLEETD_AGENT in their environment)."""
        found = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                env = p.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if env.get("FLEETD_AGENT") == name and env.get("TMUX_TMPDIR", "") == str(
                self.tmux_tmpdir
            ):
                found.append(p)
        return found

    def cleanup(self) -> None:
        self.stop(signal.SIGKILL if self.proc and self.proc.poll() is None else signal.SIGTERM)
        server = self.tmux_server_pid()
        victims: list[psutil.Process] = []
        if server is not None:
            try:
                victims = psutil.Process(server).children(recursive=True)
                victims.append(psutil.Process(server))
            except psutil.NoSuchProcess:
                pass
        for p in victims:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=5)
        if not self.run_dir.is_relative_to(self.root):
            shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.cleanup()
