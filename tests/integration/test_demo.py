"""scripts/demo end to end, as a new user runs it: it must show fleetd working and leave nothing.

The demo runs a real fleetd, a real tmux server and real provider stand-ins; these
tests run the script itself (scripts/setup included, which finds everything
installed) and then look for any process that still belongs to the demo: by the
pids the demo recorded, and by scanning every process for the demo directory in
its command line or environment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fleetd.daemon import check_roster
from fleetd.demo.run import HAND_VALUES, render_roster, summarize
from tests.conftest import require_binary
from tests.harness import wait_for

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo"


def _demo_processes(demo_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line or environment points into ``demo_dir``."""
    root = str(demo_dir)
    tmux_tmpdir = str(demo_dir / "tmux")
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid == os.getpid():
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(p.info["cmdline"] or [])
            env = p.environ()
        except psutil.Error:
            continue
        if (
            root in cmdline
            or env.get("TMUX_TMPDIR") == tmux_tmpdir
            or env.get("FLEETD_HEARTBEAT_FILE", "").startswith(root + os.sep)
        ):
            found.append(p)
    return found


def _recorded_pids(demo_dir: Path) -> tuple[dict[str, object], list[int]]:
    doc = json.loads((demo_dir / "pids.json").read_text())
    pids = list(doc["children"].values())
    for seen in doc["seen"].values():
        pids += seen
    return doc, pids


def _still_ours(pid: int, demo_dir: Path) -> bool:
    """True if ``pid`` is alive and still a demo process (not a reused pid)."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return p in _demo_processes(demo_dir)
    except psutil.Error:
        return False


def _kill_everything(proc: subprocess.Popen[bytes] | None, demo_dir: Path) -> None:
    """Safety net for a failing test: the demo's own clean-up is what is under test."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    victims = _demo_processes(demo_dir)
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=5)


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    require_binary("tmux")
    d = tmp_path / "demo"
    try:
        yield d
    finally:
        _kill_everything(None, d)


def _assert_nothing_left(demo_dir: Path) -> None:
    doc, pids = _recorded_pids(demo_dir)
    assert pids, "the demo recorded no pids"
    assert [p for p in pids if _still_ours(p, demo_dir)] == []
    assert _demo_processes(demo_dir) == []
    res = subprocess.run(
        ["tmux", "-L", str(doc["tmux_socket"]), "list-sessions"],
        env={**os.environ, "TMUX_TMPDIR": str(doc["tmux_tmpdir"])},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert res.returncode != 0, f"the demo's tmux server still runs: {res.stdout}"


def _number(label: str, text: str) -> int:
    m = re.search(re.escape(label) + r": (\d+)", text)
    assert m is not None, f"no '{label}' in the output:\n{text[-3000:]}"
    return int(m.group(1))


@pytest.mark.timeout(150)
def test_demo_runs_unattended_and_cleans_up(demo_dir: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "demo.out"
    proc = None
    try:
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                [str(DEMO), "--duration", "30", "--refresh", "3", "--dir", str(demo_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            rc = proc.wait(timeout=90)
        text = out_path.read_text(errors="replace")
        assert rc == 0, text[-4000:]
        # On screen: fleetd saw crashes, a hang, and acted.
        assert "agent_dead" in text and "crashy died" in text, text[-4000:]
        assert "agent_hung" in text, text[-4000:]
        assert "agent_started" in text
        # The summary from the event store.
        deaths = _number("deaths detected", text)
        hangs = _number("hangs detected", text)
        respawned = _number("respawned after a death or hang", text)
        assert deaths >= 1 and hangs >= 1 and respawned >= 1, text[-3000:]
        assert re.search(r"death/hang -> respawn: median [\d.]+ s, max [\d.]+ s", text)
        assert "tmux -L fleetd-demo-" in text and "attach" in text
        _assert_nothing_left(demo_dir)
    finally:
        _kill_everything(proc, demo_dir)


@pytest.mark.timeout(90)
def test_two_ctrl_c_still_clean_up(demo_dir: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "demo.out"
    proc = None
    try:
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                [str(DEMO), "--dir", str(demo_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

            def agents_seen() -> bool:
                try:
                    _doc, pids = _recorded_pids(demo_dir)
                except (OSError, ValueError, KeyError):
                    return False
                return len(pids) >= 6  # fleetd + 2 providers + some agents on screen

            wait_for(agents_seen, 45, 0.2, "the demo's first screen")
            # Ctrl-C, and an impatient second one while it cleans up.
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=45)
        text = out_path.read_text(errors="replace")
        assert rc == 0, text[-4000:]
        assert "stopping (SIGINT)" in text
        _assert_nothing_left(demo_dir)
    finally:
        _kill_everything(proc, demo_dir)


def test_shipped_roster_is_the_rendered_template_and_valid(tmp_path: Path) -> None:
    shipped = (REPO / "etc" / "demo.toml").read_text()
    assert shipped == render_roster(HAND_VALUES), (
        "etc/demo.toml is out of date: python -m fleetd.demo.run --print-roster > etc/demo.toml"
    )
    roster = check_roster(str(REPO / "etc" / "demo.toml"))
    assert {"steady", "crashy", "hangy", "flappy", "drifter", "coder-a", "coder-b"} <= set(
        roster.agents
    )
    assert roster.agents["coder-a"].providers == ("primary", "fallback")
    # Paths with quotes or backslashes stay one TOML string.
    odd = dict(HAND_VALUES, root='/tmp/we"ird\\dir')
    doc = tomllib.loads(render_roster(odd))
    assert doc["settings"]["state_dir"] == '/tmp/we"ird\\dir/state'


def test_summary_pairs_each_death_with_the_next_start() -> None:
    rows = [
        (0.0, "agent_started", "a", False),
        (10.0, "agent_dead", "a", True),
        (10.5, "agent_started", "a", False),
        (20.0, "agent_hung", "b", True),
        (20.1, "agent_killed", "b", False),
        (22.0, "agent_started", "b", False),
        (30.0, "agent_dead", "c", True),
        (31.0, "agent_fatal", "c", True),
        (40.0, "agent_restart_requested", "c", False),
        (40.2, "agent_started", "c", False),
        (50.0, "provider_down", None, True),
        (55.0, "provider_down", None, False),
        (60.0, "agent_dead", "a", True),
    ]
    s = summarize(rows)
    assert s.respawn_times == [0.5, 2.0]
    assert s.by_kind == {"agent_dead": [0.5], "agent_hung": [2.0]}
    assert (s.parked, s.unanswered, s.outages) == (1, 1, 1)
    assert s.counts["agent_dead"] == 3
