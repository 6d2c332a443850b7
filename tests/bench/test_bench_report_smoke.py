"""The report benchmark runs end to end at a tiny size (no timing asserted)."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path
from types import ModuleType

import pytest

from fleetd.config import Targets
from fleetd.history import compact, compute, last_days

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_report.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generator_produces_figures(tmp_path: Path) -> None:
    bench = _load()
    db = tmp_path / "b.sqlite"
    _first, last, n = bench.generate(db, 4, 12, seed=3)
    assert n > 4 * 12
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        start, end = last_days(last - 1, 7)
        h = compute(conn, start, end, Targets())
        assert len(h.agents) == 4
        assert h.uptime_pct is not None and 0 < h.uptime_pct <= 100
        assert h.utilization_pct is not None
        assert h.days_total == 7
        assert h.restarts > 0
        assert compact(conn, start) > 0
        h2 = compute(conn, start, end, Targets())
        assert h2.per_day_uptime == pytest.approx(h.per_day_uptime)
    finally:
        conn.close()


def test_main_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load().main(["--agents", "3", "--days", "9", "--window", "5", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "5-day report" in out
    assert "figures unchanged" in out
