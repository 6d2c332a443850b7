"""Prometheus metrics: what the supervision loop sees, for dashboards and alert rules.

One :class:`Metrics` per daemon, on its own ``CollectorRegistry`` (never the
process-global one, so tests and several instances do not collide). The daemon
calls the setters from its event loop; :meth:`Metrics.serve` answers scrapes from
the same loop, so a scrape always sees a consistent set of values (no setter runs
half-way through a scrape). :meth:`Metrics.write_textfile` feeds node_exporter's
textfile collector instead, for hosts that scrape only node_exporter.

The HTTP endpoint is deliberately minimal (GET/HEAD ``/metrics``, one request per
connection, bounded request size and time): it is meant for a loopback address.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import anyio
from anyio.abc import SocketStream, TaskStatus
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    write_to_textfile,
)
from prometheus_client import exposition as _exposition

STATES = ("UNKNOWN", "STARTING", "RUNNING", "HUNG", "BACKOFF", "STOPPED", "FATAL", "PAUSED")
PROVIDER_STATES = ("healthy", "down", "probing")
CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Text format 0.0.4: every Prometheus (2.x and 3.x) reads it. prometheus_client
# >= 0.22 announces 1.0.0 as "latest"; the body generate_latest() writes for our
# plain metric names is the same either way.
CONTENT_TYPE = getattr(
    _exposition, "CONTENT_TYPE_PLAIN_0_0_4", "text/plain; version=0.0.4; charset=utf-8"
)
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 16


def parse_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` or ``"[::1]:9464"`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class Metrics:
    def __init__(self, namespace: str = "fleetd") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.agents = Gauge(
            "agents", "Agents by lifecycle state and host", ["state", "host"], namespace=ns,
            registry=r,
        )  # fmt: skip
        self.restarts = Counter(
            "agent_restarts", "Automatic restarts of an agent", ["agent"], namespace=ns, registry=r
        )
        self.hangs = Counter(
            "agent_hangs", "Times an agent was found hung", ["agent"], namespace=ns, registry=r
        )
        self.failovers = Counter(
            "agent_failovers", "Provider failovers of an agent", ["agent"], namespace=ns, registry=r
        )
        self.incidents_open = Gauge(
            "incidents_open", "Incidents open now", namespace=ns, registry=r
        )
        self.provider_state = Gauge(
            "provider_state", "1 for the provider's current breaker state, else 0",
            ["provider", "state"], namespace=ns, registry=r,
        )  # fmt: skip
        self.host_reachable = Gauge(
            "host_reachable", "1 if the host answered its last probe", ["host"], namespace=ns,
            registry=r,
        )  # fmt: skip
        self.heartbeat_age = Gauge(
            "heartbeat_age_seconds", "Age of the agent's last heartbeat", ["agent"], namespace=ns,
            registry=r,
        )  # fmt: skip
        self.poll_cycle = Histogram(
            "poll_cycle_seconds", "Duration of one observation cycle of a host", ["host"],
            namespace=ns, registry=r, buckets=CYCLE_BUCKETS,
        )  # fmt: skip
        self.loop_lag = Gauge(
            "loop_lag_seconds", "How late the event loop ran a timer", namespace=ns, registry=r
        )
        self._hosts: set[str] = set()
        self._provider_states: dict[str, set[str]] = {}

    # --- setters the daemon calls ---------------------------------------------------

    def set_agent_states(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Counts keyed by (state, host); a missing pair is 0, a vanished host drops out.

        Every known state of every host is exported (zeros included), so a rule
        such as ``fleetd_agents{state="FATAL"} > 0`` never sees a gap.
        """
        hosts = {host for _, host in counts}
        for host in self._hosts - hosts:
            for state in STATES:
                self._remove(self.agents, state, host)
        for (state, host), n in counts.items():
            self.agents.labels(state, host).set(n)
        for host in hosts:
            for state in STATES:
                if (state, host) not in counts:
                    self.agents.labels(state, host).set(0)
        self._hosts = hosts

    def inc_restart(self, agent: str) -> None:
        self.restarts.labels(agent).inc()

    def inc_hang(self, agent: str) -> None:
        self.hangs.labels(agent).inc()

    def inc_failover(self, agent: str) -> None:
        self.failovers.labels(agent).inc()

    def set_incidents_open(self, n: int) -> None:
        self.incidents_open.set(n)

    def set_provider_state(self, name: str, state: str) -> None:
        known = self._provider_states.setdefault(name, set(PROVIDER_STATES))
        known.add(state)
        for s in known:
            self.provider_state.labels(name, s).set(1 if s == state else 0)

    def set_host_reachable(self, host: str, ok: bool) -> None:
        self.host_reachable.labels(host).set(1 if ok else 0)

    def set_heartbeat_age(self, agent: str, seconds: float) -> None:
        self.heartbeat_age.labels(agent).set(seconds)

    def observe_cycle(self, host: str, seconds: float) -> None:
        self.poll_cycle.labels(host).observe(seconds)

    def set_loop_lag(self, seconds: float) -> None:
        self.loop_lag.set(seconds)

    def forget_agent(self, agent: str) -> None:
        """Drop an agent's series (removed from the roster on reload)."""
        for metric in (self.restarts, self.hangs, self.failovers, self.heartbeat_age):
            self._remove(metric, agent)

    def forget_host(self, host: str) -> None:
        self._remove(self.host_reachable, host)
        self._remove(self.poll_cycle, host)

    @staticmethod
    def _remove(metric: Gauge | Counter | Histogram, *labels: str) -> None:
        with contextlib.suppress(KeyError):  # never set: nothing to drop
            metric.remove(*labels)

    # --- exposition -----------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in Prometheus text format 0.0.4."""
        return bytes(generate_latest(self.registry))

    def write_textfile(self, path: Path) -> None:
        """Write for node_exporter's textfile collector, atomically.

        prometheus_client writes a temporary file next to ``path`` (its name does
        not end in ``.prom``, so the collector ignores it) and renames it over
        ``path``: a scrape never reads a half-written file.
        """
        write_to_textfile(str(path), self.registry)

    async def serve(
        self, address: str, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve ``/metrics`` on ``address`` until cancelled.

        Start it with ``await tg.start(metrics.serve, "127.0.0.1:9464")``: that
        returns the bound ``host:port`` (useful with port 0) once it listens.
        """
        host, port = parse_address(address)
        limiter = anyio.CapacityLimiter(MAX_CONNECTIONS)
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener:
            sock = listener.extra(anyio.abc.SocketAttribute.local_address)
            bound_host, bound_port = str(sock[0]), int(sock[1])
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            task_status.started(f"{shown}:{bound_port}")

            async def handle(stream: SocketStream) -> None:
                async with limiter, stream:
                    await self._handle(stream)

            await listener.serve(handle)

    async def _handle(self, stream: SocketStream) -> None:
        data = b""
        with anyio.move_on_after(REQUEST_TIMEOUT):
            while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_REQUEST:
                try:
                    chunk = await stream.receive(4096)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return
                data += chunk
        line = data.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await self._reply(stream, 400, b"bad request\n", "text/plain")
            return
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await self._reply(stream, 405, b"method not allowed\n", "text/plain")
            return
        if target not in ("/metrics", "/"):
            await self._reply(stream, 404, b"not found\n", "text/plain")
            return
        await self._reply(stream, 200, self.exposition(), CONTENT_TYPE, head=method == "HEAD")

    @staticmethod
    async def _reply(
        stream: SocketStream, status: int, body: bytes, ctype: str, *, head: bool = False
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
        header = (
            f"HTTP/1.1 {status} {reason[status]}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        # The scraper may have gone away: nothing to do then.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await stream.send(header if head else header + body)
