"""The two daemons under test, each in its own temporary directory.

:class:`FleetdRig` writes a roster (private ``TMUX_TMPDIR``, unique tmux socket,
state and runtime dirs in the temp dir), starts ``python -m fleetd`` and talks to
it over its control socket, the way ``tests/harness.py`` does.
:class:`SupervisordRig` writes a ``supervisord.conf`` (unix_http_server socket in
the temp dir, ``autorestart=true``, ``startsecs=0``, ``startretries`` high) and
starts ``supervisord -n`` from the bench venv.

Both run the same workload argv per program; only the daemon differs. Restart
policy is made comparable: supervisord restarts a program that dies while
RUNNING at once, with no backoff, so fleetd runs with ``backoff.initial = 0``
(every restart immediate) and an intensity limit it never reaches.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_lib.common import BENCH_ENV, Reaper, read_stamps, wait_until
from fleetd.config import toml_value
from fleetd.control.client import Client


@dataclass
class Program:
    """One supervised program: its argv and its stamp file (same for both daemons)."""

    name: str
    argv: list[str]
    stamp: Path
    heartbeat: Path | None = None
    heartbeat_interval: float | None = None


def stamp_programs(root: Path, script: Path, count: int, prefix: str = "p") -> list[Program]:
    (root / "stamps").mkdir(parents=True, exist_ok=True)
    progs = []
    for i in range(count):
        name = f"{prefix}{i:03d}"
        stamp = root / "stamps" / name
        progs.append(Program(name, [str(script), str(stamp)], stamp))
    return progs


def all_started(progs: list[Program]) -> bool:
    return all(p.stamp.exists() and read_stamps(p.stamp) for p in progs)


@dataclass
class FleetdRig:
    root: Path
    reaper: Reaper
    programs: list[Program]
    python: str = sys.executable
    settings: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    tmux_pid: int | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_name = f"fb{uuid.uuid4().hex[:8]}"
        self.tmux_tmpdir = self.root / "tmux"
        self.tmux_tmpdir.mkdir(exist_ok=True)
        self.run_dir = self.root / "run"
        self.roster = self.root / "fleetd.toml"
        self.log = self.root / "fleetd.log"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "control.sock"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TMUX_TMPDIR"] = str(self.tmux_tmpdir)
        env.pop("TMUX", None)
        env.pop("NOTIFY_SOCKET", None)
        return env

    def write_roster(self) -> None:
        settings = {
            "state_dir": str(self.root / "state"),
            "runtime_dir": str(self.run_dir),
            "journal": False,  # do not fill the machine's journal; supervisord logs to a file
            **self.settings,
        }
        defaults = {
            "tmux_socket": self.socket_name,
            "tmux_session": "bench",
            "stop_timeout": "2s",
            "recovery_settle": "1s",
            # supervisord has no drift detection, and the workload execs `sleep`,
            # which drift detection would rightly report as another program.
            "drift": "off",
            "backoff": {"initial": "0s", "factor": 1.0, "cap": "0s", "jitter": 0.0},
            "intensity": {"max_restarts": 1000000, "window": "1s"},
            **self.defaults,
        }
        lines = ["[settings]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in settings.items()]
        lines.append("\n[defaults]")
        lines += [f"{k} = {toml_value(v)}" for k, v in defaults.items()]
        run_id = self.reaper.run_id
        for p in self.programs:
            lines.append(f'\n[agents."{p.name}"]')
            body: dict[str, Any] = {
                "command": p.argv,
                "workdir": str(self.root),
                "env": {BENCH_ENV: run_id, "LC_ALL": "C"},
            }
            if p.heartbeat is not None:
                body["heartbeat_file"] = str(p.heartbeat)
                body["heartbeat_interval"] = p.heartbeat_interval or 1.0
            lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
        self.roster.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 120.0) -> None:
        self.write_roster()
        with self.log.open("ab") as logf:
            self.proc = self.reaper.add(
                subprocess.Popen(
                    [self.python, "-m", "fleetd", "--config", str(self.roster)],
                    env=self.env,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_until(self._answers, 60, what="fleetd to answer")
        wait_until(self._tmux_server, 60, what="fleetd's tmux server")
        wait_until(lambda: all_started(self.programs), timeout, 0.2, what="all programs started")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"fleetd exited with {self.proc.returncode}:\n{tail}")
        try:
            self.call("ping", timeout=5)
        except Exception:
            return False
        return True

    def _tmux_server(self) -> bool:
        res = subprocess.run(
            ["tmux", "-L", self.socket_name, "display-message", "-p", "#{pid}"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=10,
            check=False,
        )
        if res.returncode == 0 and res.stdout.strip().isdigit():
            self.tmux_pid = int(res.stdout.strip())
            self.reaper.pids.add(self.tmux_pid)
            return True
        return False

    def call(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        with Client(self.socket_path, timeout=timeout) as c:
            return c.call(cmd, args)

    def events(self, kinds: list[str]) -> list[dict[str, Any]]:
        args: dict[str, Any] = {"limit": 10000, "after_id": 0, "kinds": kinds}
        return list(self.call("events", args)["events"])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ctl_argv(self, bindir: Path) -> list[str]:
        return [str(bindir / "fleetctl"), "--socket", str(self.socket_path), "--json", "ps"]

    def stop(self) -> None:
        if self.proc is not None:
            self.reaper.stop(self.proc)
        if self.tmux_pid is not None:
            self.reaper.kill_pid(self.tmux_pid)
            self.reaper.pids.discard(self.tmux_pid)


SUPERVISORD_CONF = """\
; generated by scripts/bench
[unix_http_server]
file={root}/supervisor.sock

[supervisord]
logfile={root}/supervisord.log
pidfile={root}/supervisord.pid
childlogdir={root}/childlogs
nodaemon=true
minfds=8192
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{root}/supervisor.sock
"""

PROGRAM = """
[program:{name}]
command={command}
directory={root}
autostart=true
autorestart=true
startsecs=0
startretries=1000000
stopsignal=TERM
stopwaitsecs=2
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile=NONE
environment={env}="{run_id}",LC_ALL="C"
"""


@dataclass
class SupervisordRig:
    root: Path
    reaper: Reaper
    programs: list[Program]
    bindir: Path  # the bench venv's bin
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "childlogs").mkdir(exist_ok=True)
        self.conf = self.root / "supervisord.conf"

    def write_conf(self) -> None:
        parts = [SUPERVISORD_CONF.format(root=self.root)]
        for p in self.programs:
            parts.append(
                PROGRAM.format(
                    name=p.name,
                    command=" ".join(p.argv),
                    root=self.root,
                    env=BENCH_ENV,
                    run_id=self.reaper.run_id,
                )
            )
        self.conf.write_text("".join(parts))

    def start(self, timeout: float = 120.0) -> None:
        self.write_conf()
        with (self.root / "supervisord.out").open("ab") as out:
            self.proc = self.reaper.add(
                subprocess.Popen(
                    [str(self.bindir / "supervisord"), "-n", "-c", str(self.conf)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_until(lambda: all_started(self.programs), timeout, 0.2, what="supervisord programs")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ctl_argv(self) -> list[str]:
        return [str(self.bindir / "supervisorctl"), "-c", str(self.conf), "status"]

    def stop(self) -> None:
        """SIGKILL supervisord, then the workload by its tag (Reaper.cleanup).

        Its own SIGTERM shutdown stops programs one after another (about 0.2 s
        each: 20 s for 100 programs), which measures nothing we report."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
