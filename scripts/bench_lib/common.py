"""Shared pieces of the benchmark: statistics, workload programs, machine facts,
and the registry that kills, by pid, every process the run started.

Invariant: every process a rig starts is recorded in :class:`Reaper` before the
rig does anything else with it, and every workload program carries
``FLEETD_BENCH_RUN=<run id>`` in its environment, so cleanup can find the programs
the daemons started without ever touching a process of someone else.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import signal
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH_ENV = "FLEETD_BENCH_RUN"

# The workload: the SAME two programs run under both daemons. bash (not dash) for
# $EPOCHREALTIME: the start stamp costs no fork, so the stamp is taken within a
# millisecond or two of exec. `exec sleep` keeps the pid the daemon started.
STAMP_SH = """#!/bin/bash
# bench workload: record a start stamp "S <epoch> <pid>", then sleep (same pid).
printf 'S %s %s\\n' "${EPOCHREALTIME/,/.}" "$$" >> "$1"
exec sleep infinity
"""

# Heartbeats for the hang figure: beat every $3 s, $4 times, then stay alive
# without beating. Every beat is also logged ("B <epoch> <pid>") so the bench
# knows the last beat's time after the heartbeat file has been replaced.
BEAT_SH = """#!/bin/bash
# bench workload: start stamp, $4 heartbeats every $3 s to $2, then hang (alive).
printf 'S %s %s\\n' "${EPOCHREALTIME/,/.}" "$$" >> "$1"
i=0
while [ "$i" -lt "$4" ]; do
    t=${EPOCHREALTIME/,/.}
    printf 'ts=%s\\npid=%s\\nstatus=working\\n' "$t" "$$" > "$2.tmp"
    mv -f "$2.tmp" "$2"
    printf 'B %s %s\\n' "$t" "$$" >> "$1"
    i=$((i + 1))
    sleep "$3"
done
exec sleep infinity
"""


def write_workload(root: Path) -> tuple[Path, Path]:
    stamp, beat = root / "stamp.sh", root / "beat.sh"
    stamp.write_text(STAMP_SH)
    beat.write_text(BEAT_SH)
    stamp.chmod(0o755)
    beat.chmod(0o755)
    return stamp, beat


def read_stamps(path: Path) -> list[tuple[str, float, int]]:
    """Lines of a stamp file as (kind, epoch, pid); torn last lines are skipped."""
    out: list[tuple[str, float, int]] = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            with contextlib.suppress(ValueError):
                out.append((parts[0], float(parts[1]), int(parts[2])))
    return out


# --- statistics ---------------------------------------------------------------


@dataclass
class Stats:
    n: int
    median: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats | None:
        if not samples:
            return None
        s = sorted(samples)
        # nearest-rank p99: with few samples it is the max, never an interpolation
        p99 = s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]
        return cls(len(s), statistics.median(s), p99, s[0], s[-1])

    def as_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "median": self.median,
            "p99": self.p99,
            "min": self.min,
            "max": self.max,
        }


@dataclass
class Row:
    """One line of the result table. ``unit`` tells how values print."""

    figure: str
    label: str
    unit: str  # "s", "ms", "MB", "cpu-s/min", "count"
    fleetd: Stats | float | None
    supervisord: Stats | float | None
    note: str = ""
    goal: str = ""
    goal_met: bool | None = None

    def ratio(self) -> float | None:
        f, s = _central(self.fleetd), _central(self.supervisord)
        if f is None or s is None or s == 0:
            return None
        return f / s

    def as_dict(self) -> dict[str, Any]:
        def conv(v: Stats | float | None) -> Any:
            return v.as_dict() if isinstance(v, Stats) else v

        return {
            "figure": self.figure,
            "label": self.label,
            "unit": self.unit,
            "fleetd": conv(self.fleetd),
            "supervisord": conv(self.supervisord),
            "ratio": self.ratio(),
            "note": self.note,
            "goal": self.goal,
            "goal_met": self.goal_met,
        }


def _central(v: Stats | float | None) -> float | None:
    if isinstance(v, Stats):
        return v.median
    return v


def fmt_value(v: Stats | float | None, unit: str) -> str:
    scale = 1000.0 if unit == "ms" else 1.0
    if v is None:
        return "n/a"
    if isinstance(v, Stats):
        m, p, lo, hi = (x * scale for x in (v.median, v.p99, v.min, v.max))
        return f"{m:.1f} / {p:.1f} / {lo:.1f} / {hi:.1f} (n={v.n})"
    return f"{v * scale:.3g}"


def render_table(rows: Iterable[Row]) -> str:
    head = ["figure", "measure", "unit", "fleetd", "supervisord", "f/s", "goal"]
    lines = [head]
    for r in rows:
        ratio = r.ratio()
        goal = ""
        if r.goal:
            mark = {True: "MET", False: "MISSED", None: "?"}[r.goal_met]
            goal = f"{r.goal}: {mark}"
        sup = fmt_value(r.supervisord, r.unit) if r.supervisord is not None else (r.note or "n/a")
        lines.append(
            [
                r.figure,
                r.label,
                r.unit,
                fmt_value(r.fleetd, r.unit),
                sup,
                f"{ratio:.2f}" if ratio is not None else "-",
                goal,
            ]
        )
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    out = []
    for i, cells in enumerate(lines):
        out.append(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if i == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


# --- machine facts -------------------------------------------------------------


def _cmd_version(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (res.stdout or res.stderr).strip().splitlines()[0] if (res.stdout or res.stderr) else "?"


def machine_facts(bench_python: str) -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from fleetd import __version__ as fleetd_version

    return {
        "cpu": cpu,
        "cores": str(psutil.cpu_count() or "?"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tmux": _cmd_version(["tmux", "-V"]),
        "fleetd": fleetd_version,
        "supervisor": _cmd_version([bench_python, "-c", _SUP_VERSION]),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


_SUP_VERSION = "import importlib.metadata as m; print(m.version('supervisor'))"


# --- process cleanup -------------------------------------------------------------


@dataclass
class Reaper:
    """Every process the bench started, killed by pid at the end (also on Ctrl-C)."""

    run_id: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)  # extra pids (tmux servers)

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(proc)
        return proc

    def workload(self) -> list[psutil.Process]:
        """Live workload programs of this run (found by their FLEETD_BENCH_RUN tag)."""
        found = []
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if p.environ().get(BENCH_ENV) == self.run_id:
                    found.append(p)
        return found

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def kill_pid(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            kids = p.children(recursive=True)
            for q in [p, *kids]:
                with contextlib.suppress(psutil.Error):
                    q.kill()
            psutil.wait_procs([p, *kids], timeout=5)

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc, timeout=5.0)
        for pid in list(self.pids):
            self.kill_pid(pid)
        left = self.workload()
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=5)
        self.procs.clear()
        self.pids.clear()


def wait_until(cond: Any, timeout: float, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
