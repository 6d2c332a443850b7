"""Host-level incidents: reachability, health and escalation of one host.

The per-agent decision core (``policy``) only learns that its host is down
(``HostDown`` -> UNKNOWN). Everything that concerns the *host* lives here, once
per host, so a VPS that drops off the network is one alert and not one per agent:

* **Reachability.** The first failed cycle opens one host incident (store scope
  ``host``) and publishes ``host_unreachable`` (or ``host_key_rejected`` when the
  host key was refused: no command was sent) with ``alert=True``; later failures
  of the same incident only update the error list. The first good cycle closes
  the incident with ``host_recovered``.
* **Health.** Disk free %, memory available % and load per CPU from each
  snapshot are compared with ``HostSpec.health``; crossing a threshold opens a
  health incident (``host_health_bad``, alert once, figures in ``data``), and
  returning inside all thresholds closes it (``host_health_ok``).
* **Escalation.** With ``escalate_after`` set, once the host has been
  unreachable that long, ``escalate_command`` (a roster-declared argv, run on the
  hub without a shell) runs ONCE per incident, after the incident's forensics
  (last observation, connection errors) are stored; ``host_escalated`` carries
  its exit status.

:func:`health_problems` is pure; :class:`HostWatch` holds the little state there
is and talks to the store and the event bus. Time comes from the caller.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import structlog

from fleetd.config import HealthThresholds, HostSpec
from fleetd.errors import HostError, HostKeyRejected
from fleetd.events import EventBus
from fleetd.hosts.base import Host, HostHealth, HostSnapshot
from fleetd.store import Store

log = structlog.get_logger("fleetd.hostwatch")

ERRORS_KEPT = 20
ESCALATE_TIMEOUT = 120.0
OUTPUT_KEPT = 2000


def health_problems(health: HostHealth, limits: HealthThresholds) -> list[str]:
    """Which thresholds ``health`` violates, as short sentences (empty: healthy)."""
    out = []
    if health.disk_free_pct < limits.disk_free_min_pct:
        out.append(
            f"disk {limits.disk_path} {health.disk_free_pct:.1f}% free "
            f"(min {limits.disk_free_min_pct:g}%)"
        )
    if health.mem_available_pct < limits.mem_available_min_pct:
        out.append(
            f"memory {health.mem_available_pct:.1f}% available "
            f"(min {limits.mem_available_min_pct:g}%)"
        )
    if health.load_per_cpu > limits.load_per_cpu_max:
        out.append(f"load {health.load_per_cpu:.2f} per CPU (max {limits.load_per_cpu_max:g})")
    return out


def health_dict(health: HostHealth) -> dict[str, Any]:
    return {
        "disk_free_pct": health.disk_free_pct,
        "mem_available_pct": health.mem_available_pct,
        "load1": health.load1,
        "cpus": health.cpus,
        "load_per_cpu": round(health.load_per_cpu, 3),
    }


class HostWatch:
    """Incidents of one host. Called by its ``HostSupervisor`` once per cycle."""

    def __init__(
        self,
        host: Host,
        spec: Callable[[], HostSpec],
        store: Store,
        bus: EventBus,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self._spec = spec
        self.store = store
        self.bus = bus
        self.clock = clock
        self.wall = wall
        self.incident: str | None = None  # open reachability incident
        self.down_since: float | None = None  # monotonic
        self.down_since_wall: float | None = None
        self.down_code: str | None = None
        self.escalated = False
        self.escalation: dict[str, Any] | None = None
        self.errors: deque[tuple[float, str]] = deque(maxlen=ERRORS_KEPT)
        self.health_incident: str | None = None
        self.health_problems: list[str] = []
        self.last_snapshot: HostSnapshot | None = None
        self.last_ok_wall: float | None = None

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def spec(self) -> HostSpec:
        return self._spec()

    @property
    def reachable(self) -> bool:
        return self.incident is None

    # --- reachability -----------------------------------------------------------

    def in_backoff(self) -> bool:
        """True while an SSH host refuses to reconnect yet: the cycle is skipped
        quietly (the incident is already open; nothing new can be learned)."""
        retry_in = getattr(self.host, "retry_in", None)
        return self.incident is not None and callable(retry_in) and float(retry_in()) > 0

    def down(self, exc: HostError) -> bool:
        """A cycle failed. Returns True if this opened the incident (first failure)."""
        self.errors.append((self.wall(), f"{exc.code}: {exc.message}"))
        if self.incident is not None:
            return False
        key = isinstance(exc, HostKeyRejected)
        kind = "host_key_rejected" if key else "host_unreachable"
        self.incident = f"{self.name}-down-{uuid.uuid4().hex[:8]}"
        self.down_since = self.clock()
        self.down_since_wall = self.wall()
        self.down_code = exc.code
        self.escalated = False
        self.escalation = None
        self.store.open_incident(self.incident, "host", self.name, kind, self.down_since_wall)
        what = (
            "its host key was refused; no command was sent"
            if key
            else "it is unreachable; its agents are UNKNOWN (not restarted)"
        )
        self.bus.publish(
            kind,
            f"host {self.name}: {what}: {exc.message}",
            host=self.name,
            incident=self.incident,
            alert=True,
            data={"code": exc.code, "error": exc.message},
        )
        return True

    def up(self, snap: HostSnapshot) -> None:
        """A cycle succeeded: close the reachability incident, check health."""
        self.last_snapshot = snap
        self.last_ok_wall = self.wall()
        if self.incident is not None:
            assert self.down_since is not None
            downtime = round(self.clock() - self.down_since, 3)
            self.store.close_incident(self.incident, self.wall())
            self.bus.publish(
                "host_recovered",
                f"host {self.name} is reachable again after {downtime:g}s; "
                "observing and adopting its agents",
                host=self.name,
                incident=self.incident,
                data={"downtime": downtime, "escalated": self.escalated},
            )
            self.incident = None
            self.down_since = self.down_since_wall = None
            self.down_code = None
        if snap.health is not None:
            self._check_health(snap.health)

    # --- health -------------------------------------------------------------------

    def _check_health(self, health: HostHealth) -> None:
        limits = self.spec.health
        problems = health_problems(health, limits)
        self.health_problems = problems
        figures = {
            **health_dict(health),
            "thresholds": limits.model_dump(mode="json"),
            "problems": problems,
        }
        if problems and self.health_incident is None:
            self.health_incident = f"{self.name}-health-{uuid.uuid4().hex[:8]}"
            self.store.open_incident(
                self.health_incident, "host", self.name, "host_health_bad", self.wall()
            )
            self.bus.publish(
                "host_health_bad",
                f"host {self.name} is unhealthy: {'; '.join(problems)}",
                host=self.name,
                incident=self.health_incident,
                alert=True,
                data=figures,
            )
        elif not problems and self.health_incident is not None:
            self.store.close_incident(self.health_incident, self.wall())
            self.bus.publish(
                "host_health_ok",
                f"host {self.name} is healthy again",
                host=self.name,
                incident=self.health_incident,
                data=figures,
            )
            self.health_incident = None

    # --- escalation -----------------------------------------------------------------

    def escalation_due(self) -> bool:
        spec = self.spec
        return (
            self.incident is not None
            and not self.escalated
            and spec.escalate_after is not None
            and bool(spec.escalate_command)
            and self.down_since is not None
            and self.clock() - self.down_since >= spec.escalate_after
        )

    def forensics_text(self) -> str:
        """What the hub knew about the host when it gave up on it (JSON)."""
        snap = self.last_snapshot
        last: dict[str, Any] | None = None
        if snap is not None:
            last = {
                "host_wall": snap.wall,
                "observed_wall": self.last_ok_wall,
                "panes": {
                    sock: [
                        {"agent": a, "pid": p.pid, "dead": p.dead, "command": p.current_command}
                        for a, p in sorted(pl.panes.items())
                    ]
                    for sock, pl in snap.panes.items()
                },
                "health": None if snap.health is None else health_dict(snap.health),
                "errors": list(snap.errors),
            }
        return json.dumps(
            {
                "host": self.name,
                "incident": self.incident,
                "down_since": self.down_since_wall,
                "connection": {
                    "state": getattr(self.host, "state", None),
                    "last_error": getattr(self.host, "last_error", None),
                },
                "errors": [{"ts": ts, "error": e} for ts, e in self.errors],
                "last_observation": last,
            },
            indent=1,
            sort_keys=True,
        )

    async def escalate(self) -> None:
        """Store forensics, then run ``escalate_command`` once for this incident."""
        if not self.escalation_due():
            return
        self.escalated = True  # before any await: never twice per incident
        incident = self.incident
        argv = list(self.spec.escalate_command)
        fid = self.store.add_forensics(
            self.wall(),
            self.name,
            f"host:{self.name}",
            "host unreachable: escalation",
            exit_status=None,
            signal=None,
            pid=None,
            scrollback=self.forensics_text(),
            heartbeat=None,
        )
        rc: int | None
        output = ""
        try:
            with anyio.fail_after(ESCALATE_TIMEOUT):
                proc = await anyio.run_process(argv, check=False, stdin=None)
            rc = proc.returncode
            output = (proc.stdout + proc.stderr).decode("utf-8", "replace")[-OUTPUT_KEPT:]
        except TimeoutError:
            rc, output = None, f"did not finish within {ESCALATE_TIMEOUT:g}s"
        except OSError as exc:
            rc, output = None, f"cannot run {argv[0]}: {exc}"
        self.escalation = {"exit_status": rc, "wall": self.wall(), "forensics_id": fid}
        self.bus.publish(
            "host_escalated",
            f"host {self.name} unreachable for over {self.spec.escalate_after:g}s: "
            f"ran {argv[0]} (exit status {rc})",
            host=self.name,
            incident=incident,
            alert=True,
            data={
                "argv": argv,
                "exit_status": rc,
                "output": output,
                "forensics_id": fid,
            },
        )

    # --- views --------------------------------------------------------------------

    def row(self) -> dict[str, Any]:
        """The host's part of ``fleetctl hosts --json`` (keys documented in docs/remote.md)."""
        spec = self.spec
        snap = self.last_snapshot
        conn_state = getattr(self.host, "state", None)
        if conn_state is None:
            conn_state = "local" if spec.kind == "local" else None
        last_contact = getattr(self.host, "last_contact", None) or self.last_ok_wall
        return {
            "mode": spec.mode if spec.kind == "ssh" else "local",
            "address": spec.address,
            "connection": conn_state,
            "connected_since": getattr(self.host, "connected_since", None),
            "last_error": getattr(self.host, "last_error", None) or None,
            "last_contact": last_contact,
            "retry_in": _retry_in(self.host),
            "round_trips": getattr(self.host, "round_trips", None),
            "down_since": self.down_since_wall,
            "host_incident": self.incident,
            "health_incident": self.health_incident,
            "health_problems": list(self.health_problems),
            "health": None if snap is None or snap.health is None else health_dict(snap.health),
            "escalation": self.escalation,
        }


def _retry_in(host: Host) -> float | None:
    fn = getattr(host, "retry_in", None)
    return round(float(fn()), 3) if callable(fn) else None
