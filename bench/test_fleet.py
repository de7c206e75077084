"""The cost of ``[fleet]`` per warm decision: fleet on (a real redis-server on loopback) against
off, in the same run (pytest-benchmark).

Run: ``.venv/bin/python -m pytest bench/test_fleet.py --benchmark-only --benchmark-timer=time.process_time``
(CPU time: the figures survive a busy machine; compare rows of one run, as ratios).

Each round is a batch of :data:`BATCH` warm decisions on one uvloop loop (every DNS answer
cached), then one loop turn for the fleet's sender: what a worker does with the rejections
of a turn (one pipeline). Rows:

- ``accept``: a decision the memo answers; with the fleet on it reads no fleet state and
  counts nothing (the pre-screen's fleet probe is skipped while no block is held);
- ``reject``: a DNSBL-listed client: each REJECT is queued and the batch's rejections go to
  Redis in one pipeline (the threshold set out of reach, so it keeps counting);
- ``fleet_block``: the same client once the fleet blocked it: refused at the pre-screen, then
  by the memo until the block ends (a memo hit of a refusal asks the fleet whether a block
  holds the client, so that it is not counted as a new rejection: a dict probe or two).
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from checkid.config.fleet import FleetConfig
from checkid.engine.decision import Envelope
from checkid.engine.engine import Engine
from testsupport.config import base_config
from testsupport.dnsserver import TestDnsServer
from testsupport.redisserver import RedisServer

BATCH = 1000
ZONES = Path(__file__).resolve().parent.parent / "testsupport" / "zones"
CLIENTS = {"accept": "192.0.2.1", "reject": "203.0.113.10", "fleet_block": "203.0.113.10"}


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = uvloop.new_event_loop()
    asyncio.set_event_loop(lp)
    yield lp
    asyncio.set_event_loop(None)
    lp.close()


@pytest.fixture(scope="module")
def dns() -> Iterator[TestDnsServer]:
    with TestDnsServer(ZONES) as server:
        yield server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _engine(loop: asyncio.AbstractEventLoop, dns: TestDnsServer, fleet: FleetConfig) -> Engine:
    engine = Engine(dataclasses.replace(base_config(dns), fleet=fleet))
    if engine.fleet is not None:
        loop.run_until_complete(engine.fleet.start())
        deadline = time.monotonic() + 30
        while not engine.fleet.up:
            assert time.monotonic() < deadline, "the fleet did not come up"
            loop.run_until_complete(asyncio.sleep(0.01))
    return engine


@pytest.mark.parametrize("fleet", ["off", "on"])
@pytest.mark.parametrize("row", ["accept", "reject", "fleet_block"])
def test_warm_decision(benchmark, loop, dns, redis_server, fleet, row):
    if row == "fleet_block" and fleet == "off":
        pytest.skip("a fleet block needs the fleet")
    config = FleetConfig()
    if fleet == "on":
        config = FleetConfig(redis=redis_server.url, budget_ms=50.0, key_prefix=f"bench-{row}:",
                             block_after=1 if row == "fleet_block" else 10**9)
    engine = _engine(loop, dns, config)
    envelope = Envelope(CLIENTS[row], "example.com", "example.com", "a@example.com", ("b@example.org",))

    async def batch() -> None:
        for _ in range(BATCH):
            await engine.decide(envelope)
        await asyncio.sleep(0)  # the sender's turn: one pipeline for the batch

    for _ in range(3):  # warm the caches; for fleet_block, learn the block
        loop.run_until_complete(batch())
    if row == "fleet_block":
        deadline = time.monotonic() + 30
        while engine.fleet is not None and not engine.fleet.blocks:
            assert time.monotonic() < deadline, "no block learned"
            loop.run_until_complete(asyncio.sleep(0.01))
    benchmark.extra_info["batch"] = BATCH
    benchmark.pedantic(lambda: loop.run_until_complete(batch()), rounds=20, warmup_rounds=2)
    if engine.fleet is not None:
        loop.run_until_complete(engine.fleet.close())
