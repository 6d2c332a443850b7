"""The metrics endpoint over real HTTP on loopback, and the textfile output."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fleetd.metrics import Metrics, parse_address


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert isinstance(s, Sample)
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def filled() -> Metrics:
    m = Metrics()
    m.set_agent_states({("RUNNING", "h1"): 3, ("FATAL", "h1"): 1, ("RUNNING", "h2"): 2})
    m.inc_restart("a")
    m.inc_restart("a")
    m.inc_hang("a")
    m.inc_failover("b")
    m.set_incidents_open(2)
    m.set_provider_state("anthropic", "down")
    m.set_host_reachable("h1", True)
    m.set_host_reachable("h2", False)
    m.set_heartbeat_age("a", 12.5)
    m.observe_cycle("h1", 0.03)
    m.observe_cycle("h1", 0.2)
    m.set_loop_lag(0.004)
    return m


def check_values(got: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
    assert got[("fleetd_agents", (("host", "h1"), ("state", "RUNNING")))] == 3
    assert got[("fleetd_agents", (("host", "h1"), ("state", "FATAL")))] == 1
    assert got[("fleetd_agents", (("host", "h1"), ("state", "PAUSED")))] == 0
    assert got[("fleetd_agents", (("host", "h2"), ("state", "RUNNING")))] == 2
    assert got[("fleetd_agent_restarts_total", (("agent", "a"),))] == 2
    assert got[("fleetd_agent_hangs_total", (("agent", "a"),))] == 1
    assert got[("fleetd_agent_failovers_total", (("agent", "b"),))] == 1
    assert got[("fleetd_incidents_open", ())] == 2
    assert got[("fleetd_provider_state", (("provider", "anthropic"), ("state", "down")))] == 1
    assert got[("fleetd_provider_state", (("provider", "anthropic"), ("state", "healthy")))] == 0
    assert got[("fleetd_host_reachable", (("host", "h1"),))] == 1
    assert got[("fleetd_host_reachable", (("host", "h2"),))] == 0
    assert got[("fleetd_heartbeat_age_seconds", (("agent", "a"),))] == 12.5
    assert got[("fleetd_poll_cycle_seconds_count", (("host", "h1"),))] == 2
    assert got[("fleetd_poll_cycle_seconds_sum", (("host", "h1"),))] == pytest.approx(0.23)
    assert got[("fleetd_poll_cycle_seconds_bucket", (("host", "h1"), ("le", "0.05")))] == 1
    assert got[("fleetd_loop_lag_seconds", ())] == 0.004


async def test_scrape_over_http() -> None:
    m = filled()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            bound = await tg.start(m.serve, "127.0.0.1:0")
            host, port = parse_address(bound)
            assert host == "127.0.0.1" and port > 0
            async with httpx.AsyncClient(base_url=f"http://{bound}", timeout=5) as client:
                r = await client.get("/metrics")
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
                check_values(samples(r.text))

                # values set later show in the next scrape; a vanished host drops out
                m.set_agent_states({("RUNNING", "h1"): 4})
                m.set_loop_lag(0.5)
                got = samples((await client.get("/metrics")).text)
                assert got[("fleetd_agents", (("host", "h1"), ("state", "RUNNING")))] == 4
                assert got[("fleetd_agents", (("host", "h1"), ("state", "FATAL")))] == 0
                assert ("fleetd_agents", (("host", "h2"), ("state", "RUNNING"))) not in got
                assert got[("fleetd_loop_lag_seconds", ())] == 0.5

                assert (await client.get("/nope")).status_code == 404
                assert (await client.post("/metrics")).status_code == 405
                head = await client.head("/metrics")
                assert head.status_code == 200 and head.content == b""
            tg.cancel_scope.cancel()
    # cancelled: the port is closed again
    with pytest.raises(OSError):
        await anyio.connect_tcp(host, port)


async def test_garbage_and_silent_clients_do_not_stop_the_server() -> None:
    m = filled()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            bound = await tg.start(m.serve, "127.0.0.1:0")
            host, port = parse_address(bound)
            silent = await anyio.connect_tcp(host, port)  # sends nothing
            try:
                bad = await anyio.connect_tcp(host, port)
                await bad.send(b"\x00garbage\r\n\r\n")
                reply = await bad.receive()
                assert reply.startswith(b"HTTP/1.1 400")
                await bad.aclose()
                async with httpx.AsyncClient(timeout=5) as client:
                    r = await client.get(f"http://{bound}/metrics")
                    assert r.status_code == 200
            finally:
                await silent.aclose()
            tg.cancel_scope.cancel()


def test_textfile_is_written_atomically_and_parses(tmp_path: Path) -> None:
    m = filled()
    path = tmp_path / "fleetd.prom"
    path.write_text("old content that is not valid\n")
    inode_before = path.stat().st_ino
    m.write_textfile(path)
    assert path.stat().st_ino != inode_before  # replaced by rename, not rewritten in place
    check_values(samples(path.read_text()))
    assert os.listdir(tmp_path) == ["fleetd.prom"]  # no temporary file left behind
    m.forget_agent("a")
    m.write_textfile(path)
    assert 'agent="a"' not in path.read_text()


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", ":80", "h:99999"):
        with pytest.raises(ValueError):
            parse_address(bad)
