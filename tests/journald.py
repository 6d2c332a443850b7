"""A real, private systemd-journald for tests, and a way to read back what it stored.

How it runs without systemd as PID 1 and without touching the machine's journal:
``unshare --mount`` gives journald its own mount namespace, where a tmpfs is
mounted over ``/run`` (so nothing of the host's /run is visible or writable) and two
directories of a private temp dir are bind-mounted at ``/run/systemd`` and
``/run/log``. journald, started in that namespace, binds its sockets
(``/run/systemd/journal/socket``, ``stdout``, ``dev-log``) and writes its volatile
journal under ``/run/log/journal/<machine-id>/``, i.e. inside the temp dir, where
the test (outside the namespace) reaches the same socket inodes and files by their
temp-dir paths. A drop-in in ``/run/systemd/journald.conf.d`` (read by journald,
named to sort last) makes storage volatile and turns off kmsg, audit, wall and
forwarding. The namespace dies with journald, which the fixture stops by pid;
then the temp dir is removed. Several such journalds can run at once.

Use it from a test module::

    from tests.journald import Journald, running_journald

    @pytest.fixture
    def journald() -> Iterator[Journald]:
        with running_journald() as j:
            yield j

or register the ``journald`` fixture below with ``pytest_plugins = ["tests.journald"]``
in the root conftest.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require, require_binary, require_root

JOURNALD_CANDIDATES = ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")

_CONF = """\
[Journal]
Storage=volatile
ReadKMsg=no
Audit=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitIntervalSec=0
RuntimeMaxUse=256M
RuntimeMaxFileSize=64M
"""

# Runs inside the new mount namespace. $1 = temp dir, $2 = journald binary.
_SETUP = """\
set -e
mount -t tmpfs -o mode=0755 fleetd-test-run /run
mkdir -p /run/systemd /run/log
mount --bind "$1/run" /run/systemd
mount --bind "$1/log" /run/log
exec "$2"
"""


_UNSHARE = ("unshare", "--mount", "--propagation", "private", "--")


def _normalize(value: Any) -> Any:
    """journalctl -o json gives binary values as byte arrays; make them text."""
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


@dataclass
class Journald:
    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def socket_path(self) -> str:
        return str(self.root / "run" / "journal" / "socket")

    @property
    def journal_dir(self) -> Path:
        return self.root / "log" / "journal"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def query(self, *matches: str, identifier: str | None = "fleetd") -> list[dict[str, Any]]:
        """Entries matching every ``FIELD=value`` (and SYSLOG_IDENTIFIER unless None)."""
        args = ["journalctl", "--directory", str(self.journal_dir), "-o", "json", "--all"]
        args += ["--no-pager", "-q"]
        if identifier is not None:
            args.append(f"SYSLOG_IDENTIFIER={identifier}")
        args += list(matches)
        out = subprocess.run(args, capture_output=True, timeout=30, check=False)
        if out.returncode != 0 and out.stdout.strip():
            raise RuntimeError(f"journalctl failed: {out.stderr.decode(errors='replace')}")
        entries = []
        for line in out.stdout.splitlines():
            if line.strip():
                raw = json.loads(line)
                entries.append({k: _normalize(v) for k, v in raw.items()})
        return entries

    def wait_for(
        self,
        *matches: str,
        count: int = 1,
        timeout: float = 15.0,
        identifier: str | None = "fleetd",
    ) -> list[dict[str, Any]]:
        """Poll :meth:`query` until ``count`` entries match, or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.query(*matches, identifier=identifier)
            if len(entries) >= count or time.monotonic() > deadline:
                return entries
            time.sleep(0.1)


@contextlib.contextmanager
def running_journald(start_timeout: float = 15.0) -> Iterator[Journald]:
    require_root()
    require_binary("unshare")
    require_binary("journalctl")
    binary = next((p for p in JOURNALD_CANDIDATES if Path(p).exists()), None)
    require(binary is not None, "needs systemd-journald (Debian package systemd)")
    assert binary is not None
    # Short path under /tmp: the socket path must fit in sun_path (108 bytes), and it
    # must not be under /run, which the namespace hides behind a tmpfs.
    root = Path(tempfile.mkdtemp(prefix="fleetd-jd-", dir="/tmp"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        (root / "run" / "journald.conf.d").mkdir(parents=True)
        (root / "run" / "journald.conf.d" / "zz-fleetd-test.conf").write_text(_CONF)
        (root / "log").mkdir()
        stderr_path = root / "journald.stderr"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [*_UNSHARE, "sh", "-c", _SETUP, "sh", str(root), binary],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        j = Journald(root=root, proc=proc)
        deadline = time.monotonic() + start_timeout
        while not Path(j.socket_path).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"systemd-journald did not start (exit {proc.poll()}): "
                    + stderr_path.read_text(errors="replace")[-2000:]
                )
            time.sleep(0.05)
        yield j
    finally:
        if proc is not None:
            # unshare exec'd sh which exec'd journald: this pid IS journald.
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def journald() -> Iterator[Journald]:
    with running_journald() as j:
        yield j
