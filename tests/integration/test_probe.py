"""HTTP probes against a real loopback server standing in for an LLM provider.

The server is a few lines of ``asyncio.start_server`` speaking just enough
HTTP/1.1: it answers with the status in ``mode``, or hangs in mode ``hang``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import pytest

from fleetd.config import ProviderSpec
from fleetd.probe import Prober, ProbeResult, probe
from fleetd.providers import Health, new_breaker, on_probe


@dataclass
class FakeProvider:
    mode: str = "200"  # an HTTP status, or "hang"
    requests: int = 0
    server: asyncio.AbstractServer | None = None
    port: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if not head:
                    return
                if self.mode == "hang":
                    await asyncio.sleep(30)
                    return
                body = b'{"ok":true}' if self.mode == "200" else b"overloaded"
                writer.write(
                    f"HTTP/1.1 {self.mode} X\r\ncontent-length: {len(body)}\r\n"
                    "content-type: application/json\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/models"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in self.writers:
                w.close()
            await self.server.wait_closed()
            self.server = None


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fp = FakeProvider()
    fp.server = await asyncio.start_server(fp.handle, "127.0.0.1", 0)
    fp.port = fp.server.sockets[0].getsockname()[1]
    try:
        yield fp
    finally:
        await fp.close()


def spec_for(url: str, **kw: object) -> ProviderSpec:
    base: dict[str, object] = {"name": "fake", "probe_url": url, "probe_timeout": 1.0}
    base.update(kw)
    return ProviderSpec.model_validate(base)


async def test_probe_ok_error_hang_refused(provider: FakeProvider) -> None:
    s = spec_for(provider.url)
    r = await probe(s)
    assert r == ProbeResult(True, 200, None, r.elapsed)

    provider.mode = "503"
    r = await probe(s)
    assert not r.ok and r.status == 503 and r.error == "status 503, expected 200"

    provider.mode = "hang"
    t0 = time.monotonic()
    r = await probe(s)
    waited = time.monotonic() - t0
    assert not r.ok and r.status is None and r.error is not None and "timed out" in r.error
    assert waited < 10  # bounded by probe_timeout (1 s), generous for a loaded machine

    await provider.close()
    r = await probe(s)
    assert not r.ok and r.status is None and r.error is not None
    assert r.error.startswith("connection failed")


async def test_probe_method_and_expected_status(provider: FakeProvider) -> None:
    provider.mode = "401"
    s = spec_for(provider.url, probe_method="HEAD", probe_expect_status=401)
    r = await probe(s)
    assert r.ok and r.status == 401
    # The roster refuses such a URL; a probe handed one anyway fails, never raises.
    r = await probe(spec_for(provider.url).model_copy(update={"probe_url": "not a url"}))
    assert not r.ok and r.error


async def test_prober_drives_breaker_down_within_bound(provider: FakeProvider) -> None:
    provider.mode = "503"
    interval = 0.2
    s = spec_for(
        provider.url,
        probe_interval=interval,
        failure_threshold=3,
        failure_window=10,
        cooldown=60,
    )
    unprobed = ProviderSpec(name="silent")  # no probe_url: never probed
    board = new_breaker("fake", time.monotonic())
    seen: list[tuple[str, ProbeResult]] = []
    went_down = anyio.Event()
    down_at: list[float] = []

    def on_result(name: str, result: ProbeResult, now: float) -> None:
        nonlocal board
        seen.append((name, result))
        board, events = on_probe(board, s, result.ok, now, result.error or "")
        if any(e.kind == "provider_down" for e in events):
            down_at.append(now)
            went_down.set()

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        await tg.start(Prober([s, unprobed], on_result).run)
        with anyio.fail_after(15):  # the bound: 3 probes x 0.2 s, generous for CI
            await went_down.wait()
        tg.cancel_scope.cancel()
    assert board.state is Health.DOWN
    assert {n for n, _ in seen} == {"fake"}
    assert len(seen) >= 3 and all(r.status == 503 for _, r in seen)
    # Three probes, spaced by the interval: at least two intervals passed.
    assert down_at[0] - started >= 2 * interval * 0.9
    assert provider.requests >= 3


async def test_probe_does_not_swallow_cancellation(provider: FakeProvider) -> None:
    provider.mode = "hang"
    s = spec_for(provider.url, probe_timeout=30)
    results: list[ProbeResult] = []
    with anyio.move_on_after(0.3) as scope:
        results.append(await probe(s))
    assert scope.cancelled_caught and results == []
