"""``scripts/bench --quick`` runs end to end and produces every figure.

One run of the quick benchmark, about two minutes (real fleetd, real supervisord
from PyPI in .bench-venv, real tmux, netns sshd hosts when root). Nothing about
speed is asserted: only that it completes, that every figure has a value, and
that nothing it started is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.conftest import require, require_binary

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench"


def _tagged(run_id: str) -> list[int]:
    pids = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if p.environ().get("FLEETD_BENCH_RUN") == run_id:
                pids.append(p.pid)
    return pids


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_bench_smoke_produces_every_figure(tmp_path: Path) -> None:
    require_binary("tmux")
    require_binary("bash")
    out_json = tmp_path / "bench.json"
    res = subprocess.run(
        [str(BENCH), "--quick", "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=450,
        check=False,
        cwd=REPO,
    )
    if res.returncode != 0 and not (REPO / ".bench-venv/bin/supervisord").exists():
        require(False, f"supervisor could not be installed from PyPI:\n{res.stderr[-2000:]}")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    data = json.loads(out_json.read_text())
    figures = {row["figure"].split()[0] for row in data["rows"]}
    expected = {"1", "2", "3", "4", "6"}
    if os.geteuid() == 0 and Path("/usr/sbin/sshd").exists():
        expected.add("5")
    assert expected <= figures, (figures, res.stdout[-3000:])
    for row in data["rows"]:
        assert row["fleetd"] is not None, row
    both = [r for r in data["rows"] if r["figure"].startswith(("1", "3", "4"))]
    assert all(r["supervisord"] is not None for r in both if "tmux" not in r["label"])
    death = [r for r in data["rows"] if r["figure"].startswith("1")]
    assert death and all(r["ratio"] is not None for r in death)
    for key in ("cpu", "cores", "kernel", "python", "tmux", "fleetd", "supervisor"):
        assert data["machine"][key], key
    assert "| fleetd" in res.stdout and "supervisord" in res.stdout
    assert not _tagged(data["run_id"]), "bench left workload processes running"
