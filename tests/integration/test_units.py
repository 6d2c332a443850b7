"""The systemd units in units/: accepted by systemd-analyze, hardened, and shaped so
that stopping fleetd never kills the agents.

``systemd-analyze verify`` needs no running systemd (it builds a manager in-process)
but it refuses a unit whose ExecStart binary does not exist, and the units point at
/opt/fleetd/.venv/bin/{fleetd,fleetctl}, which is not installed here. So the test
verifies copies of the units with /opt/fleetd rewritten to a temp dir holding
executable stand-ins; nothing else in the units changes. ``verify`` exits 0 even
when it ignores a misspelled key or value, so any output at all is a failure. In
user mode it also needs $XDG_RUNTIME_DIR, given a temp dir.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "units"
SYSTEM_UNITS = sorted(p.name for p in UNITS.iterdir() if p.is_file())
USER_UNITS = sorted(p.name for p in (UNITS / "user").iterdir() if p.is_file())

# Reached with the hardening in units/fleetd.service; lower it when you improve it.
MAX_EXPOSURE = 1.3


def _install_copies(src: Path, dest: Path, fake_root: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for unit in src.iterdir():
        if unit.is_file():
            text = unit.read_text().replace("/opt/fleetd", str(fake_root))
            (dest / unit.name).write_text(text)


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    fake_root = tmp_path / "opt-fleetd"
    bin_dir = fake_root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("fleetd", "fleetctl"):
        stub = bin_dir / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    _install_copies(UNITS, tmp_path / "system", fake_root)
    _install_copies(UNITS / "user", tmp_path / "user", fake_root)
    (tmp_path / "xdg-runtime").mkdir(mode=0o700)
    return tmp_path


def _verify(path: Path, *, user: bool, tmp: Path) -> subprocess.CompletedProcess[str]:
    args = ["systemd-analyze"] + (["--user"] if user else []) + ["verify", str(path)]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_LOG_COLOR": "0"}
    if user:
        env |= {"XDG_RUNTIME_DIR": str(tmp / "xdg-runtime"), "HOME": str(tmp)}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_expected_units_exist() -> None:
    assert SYSTEM_UNITS == [
        "fleet-tmux@.service",
        "fleetd-deadman.service",
        "fleetd-deadman.timer",
        "fleetd.service",
    ]
    assert USER_UNITS == ["fleet-tmux@.service", "fleetd.service"]


@pytest.mark.parametrize("name", SYSTEM_UNITS)
def test_system_unit_verifies(installed: Path, name: str) -> None:
    require_binary("systemd-analyze")
    out = _verify(installed / "system" / name, user=False, tmp=installed)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


@pytest.mark.parametrize("name", USER_UNITS)
def test_user_unit_verifies(installed: Path, name: str) -> None:
    require_binary("systemd-analyze")
    out = _verify(installed / "user" / name, user=True, tmp=installed)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_verify_catches_a_typo(installed: Path) -> None:
    # Guards the "no output" rule above: verify exits 0 on this, but complains.
    require_binary("systemd-analyze")
    unit = installed / "system" / "fleetd.service"
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notfy"))
    out = _verify(unit, user=False, tmp=installed)
    assert "notfy" in out.stdout + out.stderr


def test_security_exposure_does_not_regress() -> None:
    require_binary("systemd-analyze")
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNITS / "fleetd.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_COLORS": "0"},
    )
    assert out.returncode == 0, out.stderr
    m = re.search(r"Overall exposure level for fleetd\.service: ([0-9.]+)", out.stdout)
    assert m, out.stdout[-2000:]
    assert float(m.group(1)) <= MAX_EXPOSURE, out.stdout


def _settings(path: Path) -> dict[str, list[str]]:
    """Key -> values (units repeat keys), comments and section headers skipped."""
    values: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.mark.parametrize("unit", ["fleetd.service", "user/fleetd.service"])
def test_fleetd_unit_shape(unit: str) -> None:
    s = _settings(UNITS / unit)
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30s"]
    assert s["Restart"] == ["always"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["RuntimeDirectoryPreserve"] == ["yes"]
    # The holder is wanted, never required/bound: stopping fleetd leaves the agents.
    assert "fleet-tmux@fleetd.service" in s["Wants"][0]
    for strong in ("Requires", "BindsTo", "PartOf", "Requisite"):
        assert strong not in s


@pytest.mark.parametrize("unit", ["fleet-tmux@.service", "user/fleet-tmux@.service"])
def test_holder_unit_shape(unit: str) -> None:
    s = _settings(UNITS / unit)
    assert s["Type"] == ["forking"]
    assert s["ExecStart"][0].startswith("/usr/bin/tmux -L %i start-server")
    assert "new-session -d -s fleet" in s["ExecStart"][0]
    assert "set-option -g exit-empty off" in s["ExecStart"][0]
    assert "KillMode" not in s or s["KillMode"] != ["none"]
    assert "PartOf" not in s and "BindsTo" not in s


def test_system_fleetd_and_holder_share_the_tmux_dir() -> None:
    fleetd = _settings(UNITS / "fleetd.service")
    holder = _settings(UNITS / "fleet-tmux@.service")
    assert "TMUX_TMPDIR=/run/fleet-tmux" in fleetd["Environment"]
    assert "TMUX_TMPDIR=/run/fleet-tmux" in holder["Environment"]
    assert fleetd["User"] == holder["User"]  # tmux serves clients of its own uid only
