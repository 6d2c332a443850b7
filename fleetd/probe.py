"""Active HTTP health probes for providers (the I/O half of ``fleetd.providers``).

:func:`probe` sends one request and turns every outcome into a
:class:`ProbeResult`: connection refused, DNS failure, TLS error, timeout and an
unexpected status are all ``ok=False`` with a readable ``error``. It never raises,
except for cancellation, which always propagates. :class:`Prober` runs one probe
loop per provider that has a ``probe_url``, each on its own ``probe_interval``,
inside an anyio task group, and hands each result with a monotonic timestamp to a
callback. What a result means for the provider is decided by
``fleetd.providers.on_probe``; this module decides nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import anyio
import httpx
from anyio.abc import TaskStatus

from fleetd.config import ProviderSpec

USER_AGENT = "fleetd-probe/1"

OnResult = Callable[[str, "ProbeResult", float], None]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    status: int | None  # HTTP status, None if no response arrived
    error: str | None  # why it failed; None when ok
    elapsed: float  # seconds, monotonic


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc or 'refused'}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


async def probe(
    spec: ProviderSpec,
    client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """Probe ``spec.probe_url`` once with ``spec.probe_method``.

    ``ok`` iff a response with ``spec.probe_expect_status`` arrives within
    ``spec.probe_timeout`` seconds in total (httpx's timeout is per phase, so an
    overall deadline is enforced too). Redirects are not followed: a redirect is
    a status like any other. A shared ``client`` may be passed for connection
    reuse; otherwise one is made for this probe.
    """
    start = clock()
    if not spec.probe_url:
        return ProbeResult(False, None, "no probe_url configured", 0.0)
    result: ProbeResult | None = None
    with anyio.move_on_after(spec.probe_timeout):
        result = await _request(spec, client, start, clock)
    if result is None:
        return ProbeResult(False, None, f"timed out after {spec.probe_timeout:g}s", clock() - start)
    return result


async def _request(
    spec: ProviderSpec,
    client: httpx.AsyncClient | None,
    start: float,
    clock: Callable[[], float],
) -> ProbeResult:
    assert spec.probe_url is not None
    try:
        if client is None:
            async with _new_client(spec) as own:
                status = await _status(own, spec)
        else:
            status = await _status(client, spec)
    except httpx.HTTPError as exc:
        return ProbeResult(False, None, _describe(exc), clock() - start)
    except (OSError, ValueError) as exc:  # malformed URL, socket errors httpx did not wrap
        return ProbeResult(False, None, f"{type(exc).__name__}: {exc}", clock() - start)
    elapsed = clock() - start
    if status != spec.probe_expect_status:
        return ProbeResult(
            False, status, f"status {status}, expected {spec.probe_expect_status}", elapsed
        )
    return ProbeResult(True, status, None, elapsed)


async def _status(client: httpx.AsyncClient, spec: ProviderSpec) -> int:
    # Streamed and never read: a probe needs the status line only, whatever the body size.
    assert spec.probe_url is not None
    async with client.stream(spec.probe_method, spec.probe_url, timeout=spec.probe_timeout) as r:
        return r.status_code


def _new_client(spec: ProviderSpec) -> httpx.AsyncClient:
    # trust_env=False: probes must not depend on proxy variables in fleetd's environment.
    return httpx.AsyncClient(
        timeout=spec.probe_timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": USER_AGENT},
    )


class Prober:
    """Probe every provider with a ``probe_url`` on its own interval.

    ``on_result(provider_name, result, now_monotonic)`` is called from the probe
    task; it must not block (push into a memory stream or update in-memory state).
    An exception from it is a bug and ends :meth:`run`. Probes of different
    providers never wait for each other; one provider's probes never overlap.
    To apply a reloaded roster, cancel :meth:`run` and start a new Prober.
    """

    def __init__(
        self,
        specs: Iterable[ProviderSpec],
        on_result: OnResult,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.specs = [s for s in specs if s.probe_url]
        self.on_result = on_result
        self._clock = clock

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. Reports ``started`` once every loop is scheduled."""
        async with anyio.create_task_group() as tg:
            n = len(self.specs)
            for i, spec in enumerate(self.specs):
                # Stagger the first probes so providers are not all probed in the same instant.
                tg.start_soon(self._loop, spec, spec.probe_interval * i / max(n, 1) / 2)
            task_status.started()

    async def _loop(self, spec: ProviderSpec, offset: float) -> None:
        await anyio.sleep(offset)
        # One client per provider: connections are reused between probes.
        async with _new_client(spec) as client:
            due = self._clock()
            while True:
                result = await probe(spec, client, self._clock)
                now = self._clock()
                self.on_result(spec.name, result, now)
                due += spec.probe_interval
                if due < now:  # a probe took longer than the interval: do not catch up
                    due = now + spec.probe_interval
                await anyio.sleep(max(0.0, due - self._clock()))
