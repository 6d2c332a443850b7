"""Figure 6: the 30-day report, measured by ``scripts/bench_report.py`` (reused as is)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ReportResult:
    agents: int
    days: int
    events: int
    all_agents_s: float
    roster_s: float
    after_compaction_s: float | None
    output: str


def report_time(repo: Path, agents: int, days: int, runs: int) -> ReportResult:
    res = subprocess.run(
        [
            sys.executable,
            str(repo / "scripts/bench_report.py"),
            "--agents",
            str(agents),
            "--days",
            str(days),
            "--runs",
            str(runs),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = res.stdout
    m = re.search(r"median of \d+: (\d+) ms \(all agents\), (\d+) ms \(roster list\)", out)
    ev = re.search(r"generated (\d+) events", out)
    after = re.search(r"report after compaction: (\d+) ms", out)
    if m is None or ev is None:
        raise RuntimeError(
            f"bench_report.py gave no figure (exit {res.returncode}):\n{out}\n{res.stderr}"
        )
    return ReportResult(
        agents,
        days,
        int(ev.group(1)),
        int(m.group(1)) / 1000.0,
        int(m.group(2)) / 1000.0,
        int(after.group(1)) / 1000.0 if after else None,
        out,
    )
