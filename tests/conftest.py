"""Shared test plumbing.

System tests (root, netns, sshd, journald) call :func:`require` instead of
skipping directly: on a laptop they skip with the reason, but with
``FLEETD_TEST_STRICT=1`` (set by ``.ci/run``) a missing part is a failure, and any
skip at all fails the session, so CI always runs every test.
"""

from __future__ import annotations

import os
import shutil

import pytest

STRICT = os.environ.get("FLEETD_TEST_STRICT") == "1"


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if STRICT:
        pytest.fail(f"required system part missing under FLEETD_TEST_STRICT=1: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces, journald, sshd)")


def require_binary(name: str) -> None:
    require(shutil.which(name) is not None, f"needs {name} on PATH")


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if STRICT and _skipped:
        print(f"\nFLEETD_TEST_STRICT=1: {len(_skipped)} test(s) skipped, which CI forbids:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
