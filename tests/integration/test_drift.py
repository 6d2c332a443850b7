"""Drift in a real fleetd: an agent that switches model at runtime (like ``/model``
typed into its pane) is reported once, shown in ``ps``, and, with
``drift = "correct"``, restarted with the declared model through the restart
policy (the correction counts towards the agent's restart intensity)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import require_binary
from tests.harness import Fleet, fleet, wait_for
from tests.integration.test_failover import (
    FAST,
    FakeProvider,
    count,
    last_id,
    proc_env,
    provider_fleet,
    ps,
    running_on,
    write_roster,
)

__all__ = ["fleet"]


@pytest.fixture(autouse=True)
def _tmux() -> None:
    require_binary("tmux")


def test_model_drift_alert_and_correction(fleet: Fleet) -> None:
    prov = FakeProvider()
    prov.open()
    try:
        names = ["watched", "fixed"]
        provs = {"primary": {"probe_url": prov.url, **FAST, "model": "m-primary"}}
        provider_fleet(fleet, provs, names, chain=("primary",))
        fleet.agents["watched"]["drift"] = "alert"
        fleet.agents["fixed"]["drift"] = "correct"
        write_roster(fleet, provs)
        fleet.start()
        before = wait_for(lambda: running_on(fleet, names, "primary"), 20, what="agents up")
        time.sleep(1.5)
        mark = last_id(fleet)
        assert count(fleet, "drift_detected") == 0, "false drift on a correct agent"

        for name in names:
            (fleet.hb / f"{name}.model").write_text("other-model")
        alert = fleet.wait_event("drift_detected", "watched", timeout=20)[-1]
        assert alert["alert"] is True
        (m,) = alert["data"]["mismatches"]
        assert (m["field"], m["declared"], m["actual"]) == ("model", "m-primary", "other-model")
        assert "other-model" in alert["message"] and "m-primary" in alert["message"]
        row = wait_for(lambda: ps(fleet)["watched"]["drift"], 10, what="drift in ps")
        assert "other-model" in row and "m-primary" in row
        out = fleet.ctl("ps").stdout
        assert "DRIFT" in out

        # correct: restarted once with the declared model; the drift clears.
        fleet.wait_event("drift_detected", "fixed", timeout=20)
        fleet.wait_event("drift_cleared", "fixed", timeout=20)
        fixed = wait_for(lambda: running_on(fleet, ["fixed"], "primary"), 20, what="fixed up")
        assert fixed["fixed"]["pid"] != before["fixed"]["pid"]
        assert proc_env(fixed["fixed"]["pid"])["FLEETD_MODEL"] == "m-primary"
        assert fixed["fixed"]["model"] == "m-primary" and fixed["fixed"]["drift"] is None
        # The correction went through the restart policy and counts as a restart.
        assert fixed["fixed"]["restarts"] == 1

        time.sleep(2.0)
        rows = ps(fleet)
        assert rows["watched"]["pid"] == before["watched"]["pid"], "alert mode restarted it"
        assert rows["watched"]["drift"]
        assert count(fleet, "drift_detected", "watched", mark) == 1
        assert count(fleet, "drift_detected", "fixed", mark) == 1
        assert count(fleet, "drift_cleared", "fixed", mark) == 1
        restarts = [e for e in fleet.events("fixed", ["agent_restart_requested"]) if e["id"] > mark]
        assert len(restarts) == 1 and "drift correction" in restarts[0]["message"]

        # An operator restart brings the watched agent back to the roster: cleared.
        assert fleet.ctl("restart", "watched").returncode == 0
        fleet.wait_event("drift_cleared", "watched", timeout=20)
        assert ps(fleet)["watched"]["drift"] is None
    finally:
        prov.close()
