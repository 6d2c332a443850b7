"""The figures: each function drives the rigs and returns raw samples.

Timing rule: every latency comes from the workload's own stamps (``S``/``B``
lines written by the program itself) or fleetd's event log, never from how
quickly the bench happens to notice, so the bench's polling adds no error.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench_lib.common import BENCH_ENV, read_stamps
from bench_lib.rigs import FleetdRig, Program, SupervisordRig

PENDING_TIMEOUT = 15.0


# --- 1. death -> replacement running -------------------------------------------------


@dataclass
class KillState:
    programs: list[Program]
    run_id: str
    samples: list[float] = field(default_factory=list)
    misses: int = 0
    pending: dict[str, tuple[float, int]] = field(default_factory=dict)  # name -> (t, n lines)

    def kill_one(self, rng: random.Random) -> bool:
        idle = [p for p in self.programs if p.name not in self.pending]
        if not idle:
            return False
        p = rng.choice(idle)
        stamps = [s for s in read_stamps(p.stamp) if s[0] == "S"]
        if not stamps:
            return False
        pid = stamps[-1][2]
        if not _is_ours(pid, self.run_id):
            return False  # between lives (or not ours): pick another next time
        t = time.time()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.pending[p.name] = (t, len(stamps))
        return True

    def check(self, by_name: dict[str, Program]) -> None:
        now = time.time()
        for name, (t, n) in list(self.pending.items()):
            starts = [s for s in read_stamps(by_name[name].stamp) if s[0] == "S"]
            if len(starts) > n:
                self.samples.append(starts[n][1] - t)
                del self.pending[name]
            elif now - t > PENDING_TIMEOUT:
                self.misses += 1
                del self.pending[name]


def _is_ours(pid: int, run_id: str) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and p.environ().get(BENCH_ENV) == run_id
    except psutil.Error:
        return False


def death_to_replacement(
    fleetd: FleetdRig, supd: SupervisordRig, kills: int, pace: float, run_id: str, seed: int = 7
) -> tuple[KillState, KillState]:
    """SIGKILL random running programs, alternating daemons, one kill every ``pace``
    seconds overall (so each daemon sees one every ``2 * pace``)."""
    rng = random.Random(seed)
    states = [KillState(fleetd.programs, run_id), KillState(supd.programs, run_id)]
    names = [{p.name: p for p in r.programs} for r in (fleetd, supd)]
    done = [0, 0]
    turn = 0
    next_kill = time.monotonic()
    deadline = time.monotonic() + kills * pace * 2 * 3 + 60
    while min(done) < kills and time.monotonic() < deadline:
        for st, by in zip(states, names, strict=True):
            st.check(by)
        if time.monotonic() >= next_kill:
            if done[turn] < kills and states[turn].kill_one(rng):
                done[turn] += 1
            turn ^= 1
            next_kill += pace
        time.sleep(0.005)
    end = time.monotonic() + PENDING_TIMEOUT + 1
    while any(st.pending for st in states) and time.monotonic() < end:
        for st, by in zip(states, names, strict=True):
            st.check(by)
        time.sleep(0.02)
    for st, by in zip(states, names, strict=True):
        st.check(by)
    return states[0], states[1]


# --- 2. hang -> detected -------------------------------------------------------------


def hang_samples(rig: FleetdRig, staleness: float) -> tuple[list[float], list[float]]:
    """(HUNG event ts - deadline, replacement start - deadline) for each hang, where
    deadline = last beat ts (from the program's own log) + staleness."""
    by_name = {p.name: p for p in rig.programs}
    detected: list[float] = []
    replaced: list[float] = []
    for ev in rig.events(["agent_hung"]):
        prog = by_name.get(str(ev.get("agent")))
        if prog is None:
            continue
        ts = float(ev["ts"])
        lines = read_stamps(prog.stamp)
        beats = [t for k, t, _ in lines if k == "B" and t < ts]
        if not beats:
            continue
        deadline = beats[-1] + staleness
        detected.append(ts - deadline)
        starts = [t for k, t, _ in lines if k == "S" and t > ts]
        if starts:
            replaced.append(starts[0] - deadline)
    return detected, replaced


# --- 3. idle overhead ------------------------------------------------------------------


def _cpu(pid: int, children: bool) -> float:
    t = psutil.Process(pid).cpu_times()
    own = t.user + t.system
    return own + (t.children_user + t.children_system if children else 0.0)


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


@dataclass
class Idle:
    fleetd_cpu: float  # cpu-s per minute: fleetd + reaped helpers (tmux clients)
    tmux_cpu: float  # cpu-s per minute: the tmux server itself (shared infrastructure)
    supd_cpu: float  # cpu-s per minute: supervisord + reaped helpers
    fleetd_peak_mb: float
    tmux_peak_mb: float
    supd_peak_mb: float
    fleetd_rss_mb: float
    supd_rss_mb: float
    window: float


def idle_overhead(fleetd: FleetdRig, supd: SupervisordRig, window: float, settle: float) -> Idle:
    """CPU per minute over ``window`` seconds of doing nothing but supervising.

    A daemon's reaped children (fleetd's tmux client calls) count as its own
    helpers; the workload is not a child of either daemon's accounting here:
    fleetd's programs are children of the tmux server (whose own CPU, without its
    children, is reported apart), and supervisord's idle programs never exit
    during the window, so its children times do not move.
    """
    assert fleetd.tmux_pid is not None
    time.sleep(settle)
    f0, t0, s0 = _cpu(fleetd.pid, True), _cpu(fleetd.tmux_pid, False), _cpu(supd.pid, True)
    w0 = time.monotonic()
    time.sleep(window)
    wall = time.monotonic() - w0
    f1, t1, s1 = _cpu(fleetd.pid, True), _cpu(fleetd.tmux_pid, False), _cpu(supd.pid, True)
    per_min = 60.0 / wall
    return Idle(
        fleetd_cpu=(f1 - f0) * per_min,
        tmux_cpu=(t1 - t0) * per_min,
        supd_cpu=(s1 - s0) * per_min,
        fleetd_peak_mb=_hwm_mb(fleetd.pid),
        tmux_peak_mb=_hwm_mb(fleetd.tmux_pid),
        supd_peak_mb=_hwm_mb(supd.pid),
        fleetd_rss_mb=_rss_mb(fleetd.pid),
        supd_rss_mb=_rss_mb(supd.pid),
        window=wall,
    )


# --- 4. control latency ---------------------------------------------------------------


def control_latency(
    fleetctl: list[str], supervisorctl: list[str], runs: int, warmup: int = 2
) -> tuple[list[float], list[float], int]:
    """Wall time of whole client runs, interleaved (a, b, a, b...); returns samples
    and the number of runs that failed (fleetctl non-zero, or supervisorctl with
    a status other than 0/3: 3 only means "some program is not RUNNING")."""
    fs: list[float] = []
    ss: list[float] = []
    failed = 0
    for i in range(runs + warmup):
        for argv, out, ok in ((fleetctl, fs, (0,)), (supervisorctl, ss, (0, 3))):
            t = time.perf_counter()
            res = subprocess.run(argv, capture_output=True, timeout=60, check=False)
            dt = time.perf_counter() - t
            if res.returncode not in ok:
                failed += 1
            if i >= warmup:
                out.append(dt)
    return fs, ss, failed


# --- profiling ---------------------------------------------------------------------------


def start_profile(py_spy: Path, pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "200",
            "--nonblocking",
            "--duration",
            str(max(1, round(seconds))),
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def summarize_profile(raw: Path, top: int = 12) -> list[str]:
    """Top frames by self samples and by inclusive samples, from py-spy's raw
    (collapsed-stack) output."""
    selfc: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            count = int(n)
            total += count
            frames = stack.split(";")
            selfc[frames[-1]] += count
            for fr in set(frames):
                incl[fr] += count
    if not total:
        return ["(no samples)"]
    out = [f"{total} samples"]
    out += ["self:"] + [f"  {100 * c / total:5.1f}%  {f}" for f, c in selfc.most_common(top)]
    interesting = [(f, c) for f, c in incl.most_common(200) if "fleetd" in f][:top]
    out += ["inclusive (fleetd frames):"] + [
        f"  {100 * c / total:5.1f}%  {f}" for f, c in interesting
    ]
    return out
