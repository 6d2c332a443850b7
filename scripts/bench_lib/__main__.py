"""Entry point of ``scripts/bench``: run the figures, print the table, write JSON."""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench_lib import figures, remote, report
from bench_lib.common import (
    Reaper,
    Row,
    Stats,
    fmt_value,
    machine_facts,
    render_table,
    write_workload,
)
from bench_lib.rigs import FleetdRig, Program, SupervisordRig, stamp_programs

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Plan:
    death_sizes: list[int]
    kills: int
    pace: float
    idle_sizes: list[int]
    idle_window: float
    ctl_size: int
    ctl_runs: int
    hang_programs: int
    hang_seconds: float
    remote: list[tuple[int, int]]
    remote_cycles: int
    report: tuple[int, int, int]  # agents, days, runs
    profile_size: int = 100
    isolated_kills: int = 0


PLANS = {
    "smoke": Plan([5], 8, 0.05, [5], 3.0, 5, 5, 2, 5.0, [(2, 2), (2, 5)], 3, (10, 10, 1), 5),
    "quick": Plan(
        [10, 100],
        60,
        0.04,
        [100, 500],
        15.0,
        100,
        20,
        5,
        8.0,
        [(5, 5), (5, 25)],
        10,
        (100, 60, 3),
        isolated_kills=6,
    ),
    "full": Plan(
        [10, 100, 500],
        300,
        0.04,
        [100, 500],
        60.0,
        500,
        30,
        10,
        20.0,
        [(5, 5), (5, 25), (20, 25)],
        20,
        (100, 365, 5),
        isolated_kills=20,
    ),
}

ISOLATED_PACE = 0.6  # overall; each daemon sees a kill every 1.2 s
HANG_INTERVAL = 0.2
HANG_FACTOR = 3.0
HANG_BEATS = 3


@dataclass
class Run:
    mode: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        f, s = fmt_value(row.fleetd, row.unit), fmt_value(row.supervisord, row.unit)
        print(f"  -> {row.label} [{row.unit}]: fleetd {f}; supervisord {s}", flush=True)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def raise_nofile() -> None:
    """500 panes, pidfds and pipes need more than the usual 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _finish_profile(prof: subprocess.Popen[bytes], out: Path, what: str, run: Run) -> None:
    try:
        prof.wait(timeout=120)
    except subprocess.TimeoutExpired:
        prof.kill()
        prof.wait(5)
    run.profile += [f"py-spy, fleetd during the {what}:", *figures.summarize_profile(out), ""]


def run_size(
    n: int,
    plan: Plan,
    root: Path,
    reaper: Reaper,
    stamp: Path,
    venv: Path,
    run: Run,
    py_spy: Path | None,
    fleetd_settings: dict[str, Any],
) -> None:
    base = root / f"n{n}"
    f_progs = stamp_programs(base / "fleetd", stamp, n)
    s_progs = stamp_programs(base / "supervisord", stamp, n)
    frig = FleetdRig(base / "fleetd", reaper, f_progs, settings=dict(fleetd_settings))
    srig = SupervisordRig(base / "supervisord", reaper, s_progs, venv / "bin")
    try:
        log(f"{n} programs: starting fleetd")
        t = time.monotonic()
        frig.start(timeout=60 + n * 0.5)
        f_up = time.monotonic() - t
        log(f"{n} programs: fleetd had all up in {f_up:.1f}s; starting supervisord")
        t = time.monotonic()
        srig.start(timeout=60 + n * 0.5)
        s_up = time.monotonic() - t
        log(f"{n} programs: supervisord had all up in {s_up:.1f}s")
        run.add(Row("0 start", f"{n} programs: all started", "s", f_up, s_up))
        if n in plan.idle_sizes:
            log(f"{n} programs: idle overhead over {plan.idle_window:g}s")
            prof = None
            if py_spy is not None and n == max(plan.idle_sizes):
                prof = figures.start_profile(
                    py_spy, frig.pid, root / f"idle-{n}.txt", plan.idle_window + 2
                )
                reaper.add(prof)
            idle = figures.idle_overhead(frig, srig, plan.idle_window, settle=2.0)
            if prof is not None:
                _finish_profile(prof, root / f"idle-{n}.txt", f"idle, {n} programs", run)
            run.extra[f"idle_{n}"] = asdict(idle)
            goal_cpu = n == 500
            run.add(
                Row(
                    "3 idle",
                    f"{n} programs: daemon CPU",
                    "cpu-s/min",
                    idle.fleetd_cpu,
                    idle.supd_cpu,
                    goal="fleetd <= supervisord" if goal_cpu else "",
                    goal_met=(idle.fleetd_cpu <= idle.supd_cpu) if goal_cpu else None,
                )
            )
            run.add(
                Row(
                    "3 idle",
                    f"{n} programs: tmux server CPU (shared, fleetd only)",
                    "cpu-s/min",
                    idle.tmux_cpu,
                    None,
                    note="(no tmux)",
                )
            )
            run.add(
                Row(
                    "3 idle",
                    f"{n} programs: daemon peak RSS",
                    "MB",
                    idle.fleetd_peak_mb,
                    idle.supd_peak_mb,
                    goal="fleetd < 80 MB",
                    goal_met=idle.fleetd_peak_mb < 80,
                )
            )
            run.add(
                Row(
                    "3 idle",
                    f"{n} programs: tmux server peak RSS (fleetd only)",
                    "MB",
                    idle.tmux_peak_mb,
                    None,
                    note="(no tmux)",
                )
            )
        if n == plan.ctl_size:
            log(f"{n} programs: control latency, {plan.ctl_runs} runs each, interleaved")
            fs, ss, failed = figures.control_latency(
                frig.ctl_argv(Path(sys.executable).parent), srig.ctl_argv(), plan.ctl_runs
            )
            run.add(
                Row(
                    "4 control",
                    f"{n} programs: fleetctl ps --json vs supervisorctl status",
                    "ms",
                    Stats.of(fs),
                    Stats.of(ss),
                    note=f"{failed} failed runs" if failed else "",
                )
            )
        if n in plan.death_sizes:
            prof = None
            if py_spy is not None and n == plan.profile_size:
                out = root / f"profile-{n}.txt"
                prof = figures.start_profile(py_spy, frig.pid, out, plan.kills * plan.pace * 2 + 2)
                reaper.add(prof)
            log(
                f"{n} programs: {plan.kills} SIGKILLs per daemon, one every "
                f"{2 * plan.pace * 1000:.0f} ms per daemon"
            )
            fk, sk = figures.death_to_replacement(frig, srig, plan.kills, plan.pace, reaper.run_id)
            if prof is not None:
                _finish_profile(prof, root / f"profile-{n}.txt", f"{n}-program kill run", run)
            if n == min(plan.death_sizes) and plan.isolated_kills:
                # supervisord notices a death at its next loop turn: another
                # program's event or its 1 s poll timeout. Paced kills wake it
                # for each other; isolated deaths (> 1 s apart) show the tick.
                log(f"{n} programs: {plan.isolated_kills} isolated SIGKILLs per daemon")
                ik, isk = figures.death_to_replacement(
                    frig, srig, plan.isolated_kills, ISOLATED_PACE, reaper.run_id, seed=11
                )
                run.add(
                    Row(
                        "1 death",
                        f"{n} programs: isolated SIGKILLs ({ISOLATED_PACE:g} s apart)",
                        "ms",
                        Stats.of(ik.samples),
                        Stats.of(isk.samples),
                    )
                )
            fst, sst = Stats.of(fk.samples), Stats.of(sk.samples)
            goal = "p50 <= 1/2 supervisord's"
            met = None if fst is None or sst is None else fst.median <= 0.5 * sst.median
            if n == 100:
                goal += ", p99 < 0.5 s"
                met = met and fst is not None and fst.p99 < 0.5
            miss = f"; misses f={fk.misses} s={sk.misses}" if fk.misses or sk.misses else ""
            run.add(
                Row(
                    "1 death",
                    f"{n} programs: SIGKILL -> replacement's start stamp",
                    "ms",
                    fst,
                    sst,
                    goal=goal,
                    goal_met=met,
                    note=miss,
                )
            )
    finally:
        log(f"{n} programs: stopping both daemons")
        frig.stop()
        srig.stop()
        reaper.cleanup()


def run_hang(plan: Plan, root: Path, reaper: Reaper, beat: Path, run: Run) -> None:
    base = root / "hang"
    (base / "stamps").mkdir(parents=True)
    (base / "hb").mkdir()
    progs = []
    for i in range(plan.hang_programs):
        name = f"h{i:02d}"
        stamp, hb = base / "stamps" / name, base / "hb" / f"{name}.hb"
        argv = [str(beat), str(stamp), str(hb), str(HANG_INTERVAL), str(HANG_BEATS)]
        progs.append(Program(name, argv, stamp, hb, HANG_INTERVAL))
    rig = FleetdRig(base, reaper, progs, defaults={"staleness_factor": HANG_FACTOR})
    try:
        log(
            f"hang: {plan.hang_programs} programs beating every {HANG_INTERVAL}s, "
            f"{HANG_BEATS} beats then silent, for {plan.hang_seconds:g}s"
        )
        rig.start()
        time.sleep(plan.hang_seconds)
        det, rep = figures.hang_samples(rig, HANG_INTERVAL * HANG_FACTOR)
    finally:
        rig.stop()
        reaper.cleanup()
    ds = Stats.of(det)
    run.add(
        Row(
            "2 hang",
            "heartbeat deadline -> HUNG event",
            "ms",
            ds,
            None,
            note="cannot detect (no heartbeat supervision)",
            goal="p99 < 0.2 s past deadline",
            goal_met=None if ds is None else ds.p99 < 0.2,
        )
    )
    run.add(
        Row(
            "2 hang",
            "heartbeat deadline -> replacement's start stamp",
            "ms",
            Stats.of(rep),
            None,
            note="cannot detect (no heartbeat supervision)",
        )
    )


def run_remote(plan: Plan, run: Run) -> None:
    why = remote.available(REPO)
    if why is not None:
        run.notes.append(f"figure 5 (remote cycle) skipped: {why}")
        log(f"remote: skipped ({why})")
        return
    log(f"remote: {plan.remote} (hosts x agents), {plan.remote_cycles} cycles each")
    for r in remote.remote_cycle(plan.remote, plan.remote_cycles):
        run.extra[f"remote_{r.hosts}x{r.agents}"] = {
            "cycle": r.cycle.as_dict(),
            "round_trips_per_host_cycle": r.round_trips_per_host_cycle,
            "sshd_sessions_per_host_cycle": r.sshd_sessions_per_host_cycle,
            "panes_seen": r.panes_seen,
        }
        run.add(
            Row(
                "5 remote",
                f"{r.hosts} hosts x {r.agents} agents: poll cycle",
                "ms",
                r.cycle,
                None,
                note="(no remote hosts)",
            )
        )
        rt = r.round_trips_per_host_cycle
        run.add(
            Row(
                "5 remote",
                f"{r.hosts} hosts x {r.agents} agents: SSH round trips/host/cycle"
                f" (sshd saw {r.sshd_sessions_per_host_cycle:g})",
                "count",
                rt,
                None,
                note="(no remote hosts)",
                goal="== 1",
                goal_met=rt == 1.0,
            )
        )


def run_report(plan: Plan, run: Run) -> None:
    agents, days, runs = plan.report
    log(f"report: {agents} agents x {days} days of events (scripts/bench_report.py)")
    r = report.report_time(REPO, agents, days, runs)
    run.extra["report"] = {k: v for k, v in asdict(r).items() if k != "output"}
    run.add(
        Row(
            "6 report",
            f"30-day report, {agents} agents x {days} days ({r.events} events)",
            "ms",
            r.all_agents_s,
            None,
            note="(no history)",
        )
    )


def _setting(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="about two minutes")
    mode.add_argument("--smoke", action="store_true", help="every figure at minimal size")
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument("--profile", action="store_true", help="py-spy fleetd during a kill run")
    p.add_argument("--bench-venv", type=Path, default=REPO / ".bench-venv")
    p.add_argument("--only", default="", help="comma list of figures to run: 1,2,3,4,5,6")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--fleetd-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra [settings] for fleetd's roster (e.g. poll_interval=30s), for experiments",
    )
    args = p.parse_args(argv)
    mode_name = "quick" if args.quick else "smoke" if args.smoke else "full"
    plan = PLANS[mode_name]
    only = {x for x in args.only.split(",") if x}
    extra_settings = {k: _setting(v) for k, _, v in (x.partition("=") for x in args.fleetd_setting)}
    venv = args.bench_venv.resolve()
    if not (venv / "bin" / "supervisord").exists():
        print(f"no supervisord in {venv}: run scripts/bench (it installs it)", file=sys.stderr)
        return 2
    py_spy = venv / "bin" / "py-spy" if args.profile else None
    if py_spy is not None and not py_spy.exists():
        print(f"no py-spy in {venv}: run scripts/bench --profile", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _interrupt)
    raise_nofile()
    run = Run(mode_name)
    facts = machine_facts(str(venv / "bin" / "python"))
    reaper = Reaper(uuid.uuid4().hex[:12])
    root = Path(tempfile.mkdtemp(prefix="fleetd-bench-"))
    started = time.monotonic()
    log(f"scripts/bench {mode_name}: temp dir {root}; run id {reaper.run_id}")
    try:
        stamp, beat = write_workload(root)

        def want(fig: str) -> bool:
            return not only or fig in only

        sizes = sorted(
            ({*plan.death_sizes} if want("1") else set())
            | ({*plan.idle_sizes} if want("3") else set())
            | ({plan.ctl_size} if want("4") else set())
        )
        sub = Plan(**{**asdict(plan)})
        if not want("1"):
            sub.death_sizes = []
        if not want("3"):
            sub.idle_sizes = []
        if not want("4"):
            sub.ctl_size = -1
        for n in sizes:
            run_size(n, sub, root, reaper, stamp, venv, run, py_spy, extra_settings)
        if want("2"):
            run_hang(plan, root, reaper, beat, run)
        if want("5"):
            run_remote(plan, run)
        if want("6"):
            run_report(plan, run)
    finally:
        reaper.cleanup()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - started
    cmd = "scripts/bench" + (f" --{mode_name}" if mode_name != "full" else "")
    print()
    print(f"## fleetd vs supervisord ({mode_name}; `{cmd}`; {elapsed:.0f} s)")
    print()
    for k, v in facts.items():
        print(f"- {k}: {v}")
    print()
    print(
        "Values: median / p99 / min / max (n=samples); ratio f/s = fleetd median / supervisord "
        "median. fleetd: backoff 0 (immediate restart, like supervisord's autorestart of a "
        "RUNNING program), poll_interval 5s, journal off; supervisord: startsecs=0, "
        "autorestart=true, startretries=1000000."
    )
    print()
    if extra_settings:
        print(f"fleetd settings overridden for this run: {extra_settings}")
        print()
    print(render_table(run.rows))
    for note in run.notes:
        print(f"note: {note}")
    if run.profile:
        print()
        print("\n".join(run.profile))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "mode": mode_name,
                    "run_id": reaper.run_id,
                    "command": cmd,
                    "fleetd_settings": extra_settings,
                    "seconds": round(elapsed, 1),
                    "machine": facts,
                    "rows": [r.as_dict() for r in run.rows],
                    "notes": run.notes,
                    "profile": run.profile,
                    "extra": run.extra,
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was cleaned up", file=sys.stderr)
        sys.exit(130)
