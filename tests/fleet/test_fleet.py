"""Fleet state on a real Redis: learned blocks across engines ("hosts"), expiry, Redis lost and
back, flushes that reach another engine, and the [fleet] configuration's errors."""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from collections.abc import Callable

import pytest
from hypothesis import given, strategies as st

from checkid.config import from_dict
from checkid.config.fleet import FleetConfig
from checkid.engine.decision import Action, Envelope
from checkid.engine.dns.cache import MemoryCache, mentions
from checkid.engine.engine import Engine
from checkid.engine.fleet import FLEET_LIST, Block, Flush, decode_event, encode_event
from checkid.errors import ConfigError
from checkid.runtime import control
from testsupport.config import base_config
from tests.conftest import run

LISTED = "203.0.113.10"  # on the test zen.spamhaus.org (SBL): rejected at the pre-screen
NEIGHBOUR = "203.0.113.20"  # same /24, on no list
DNSBL_NAME = "10.113.0.203.zen.spamhaus.org"
#: generous: the budget is a bound on a busy CI machine, not a speed asserted
BUDGET_MS = 1000.0
SECONDS = 30.0


def fleet_config(redis_server, **kw) -> FleetConfig:
    values = dict(redis=redis_server.url, budget_ms=BUDGET_MS, block_after=3, block_seconds=60,
                  key_prefix=f"test{redis_server.port}:")
    values.update(kw)
    return FleetConfig(**values)


def engine_for(dns, fleet: FleetConfig, clock: Callable[[], float] = time.monotonic) -> Engine:
    return Engine(dataclasses.replace(base_config(dns), fleet=fleet), clock=clock)


async def until(condition: Callable[[], object], what: str, seconds: float = SECONDS) -> None:
    """Poll ``condition`` (on the loop: the fleet's tasks run meanwhile) until true, bounded."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (after {seconds:.0f} s)")
        await asyncio.sleep(0.01)


def decide(engine: Engine, ip: str):
    return engine.decide(Envelope(ip, "example.com"))


def test_rejections_on_one_host_block_at_another_without_a_dns_query(dns, redis_server):
    fleet = fleet_config(redis_server)

    async def scenario() -> None:
        a, b = engine_for(dns, fleet), engine_for(dns, fleet)
        for engine in (a, b):
            await engine.fleet.start()
        try:
            await until(lambda: a.fleet.up and b.fleet.up, "both engines following the fleet")
            for _ in range(3):
                assert (await decide(a, LISTED)).action is Action.REJECT
            await until(lambda: b.fleet.blocked(ipaddress.ip_address(LISTED)), "the block reaching host B")
            assert a.fleet.rejections(ipaddress.ip_address(LISTED)).address == 3
            dns.reset_counts()
            d = await decide(b, LISTED)
            assert d.action is Action.REJECT and d.stage == "prescreen"
            assert FLEET_LIST in d.text
            assert dns.count(DNSBL_NAME) == 0
            assert b.counts[("list_hits", "prescreen", FLEET_LIST)] == 1
            # a neighbour is not blocked by address (no prefix threshold here)
            assert FLEET_LIST not in (await decide(b, NEIGHBOUR)).text
        finally:
            for engine in (a, b):
                await engine.fleet.close()

    run(scenario())


def test_a_new_engine_loads_the_current_blocks_and_a_prefix_blocks_its_neighbours(dns, redis_server):
    fleet = fleet_config(redis_server, block_after=0, block_after_prefix=2)

    async def scenario() -> None:
        a = engine_for(dns, fleet)
        await a.fleet.start()
        try:
            await until(lambda: a.fleet.up, "following the fleet")
            for _ in range(2):
                await decide(a, LISTED)
            await until(lambda: a.fleet.blocked(ipaddress.ip_address(NEIGHBOUR)), "the /24 blocked")
            late = engine_for(dns, fleet)  # started after the block was published: it loads it
            await late.fleet.start()
            try:
                await until(lambda: late.fleet.up, "the late engine following the fleet")
                d = await decide(late, NEIGHBOUR)
                assert d.action is Action.REJECT and "203.0.113.0/24" in d.text
            finally:
                await late.fleet.close()
        finally:
            await a.fleet.close()

    run(scenario())


def test_a_learned_block_expires(dns, redis_server):
    now = [1000.0]
    fleet = fleet_config(redis_server, block_seconds=60)

    async def scenario() -> None:
        a = engine_for(dns, fleet, clock=lambda: now[0])
        await a.fleet.start()
        try:
            await until(lambda: a.fleet.up, "following the fleet")
            for _ in range(3):
                await decide(a, LISTED)
            ip = ipaddress.ip_address(LISTED)
            await until(lambda: a.fleet.blocked(ip), "the block learned")
            now[0] += 59
            assert a.fleet.blocked(ip)
            now[0] += 2
            assert a.fleet.blocked(ip) is None
            dns.reset_counts()
            d = await decide(a, LISTED)
            assert d.action is Action.REJECT and FLEET_LIST not in d.text  # the DNSBL's own refusal
        finally:
            await a.fleet.close()

    run(scenario())


def test_redis_lost_mid_load_fails_no_decision_and_the_fleet_resumes_when_it_is_back(dns, redis_server):
    fleet = fleet_config(redis_server, budget_ms=200.0)

    async def scenario() -> None:
        a = engine_for(dns, fleet)
        await a.fleet.start()
        try:
            await until(lambda: a.fleet.up, "following the fleet")
            decided, stopped_at = 0, None
            deadline = time.monotonic() + SECONDS
            while decided < 3000 and time.monotonic() < deadline:
                if decided == 200:
                    redis_server.stop()
                    stopped_at = decided
                d = await decide(a, LISTED if decided % 2 else NEIGHBOUR)
                assert d.action in (Action.REJECT, Action.FILTER, Action.ACCEPT), d
                assert d.reason != "policy_error"
                decided += 1
                if stopped_at is not None and not a.fleet.up and decided >= 400:
                    break
            assert stopped_at is not None
            await until(lambda: not a.fleet.up, "the fleet marked down")
            await decide(a, LISTED)
            assert sum(n for key, n in a.counts.items() if key[0] == "fleet_fallbacks") > 0
            redis_server.start()
            await until(lambda: a.fleet.up, "the fleet back after Redis restarted")
            for _ in range(3):
                await decide(a, LISTED)
            await until(lambda: a.fleet.blocked(ipaddress.ip_address(LISTED)), "a block learned again")
        finally:
            await a.fleet.close()

    run(scenario())


def test_a_flush_published_reaches_another_engine(dns, redis_server):
    fleet = fleet_config(redis_server)

    async def scenario() -> None:
        b = engine_for(dns, fleet)
        assert isinstance(b.cache, MemoryCache)
        flushed: list[str | None] = []

        def on_flush(name: str | None) -> None:
            flushed.append(name)
            b.cache.drop(lambda key: mentions(key, name))  # what a worker does with its memory layer

        b.fleet.on_flush = on_flush
        await b.fleet.start()
        try:
            await until(lambda: b.fleet.up, "following the fleet")
            await decide(b, "192.0.2.1")
            assert any(mentions(k, "example.com") for k in list(b.cache._data))
            heard = await asyncio.to_thread(control.publish_flush, fleet, "example.com")
            assert heard >= 1
            await until(lambda: flushed, "the flush reaching the engine")
            assert flushed == ["example.com"]
            assert not any(mentions(k, "example.com") for k in list(b.cache._data))
        finally:
            await b.fleet.close()

    run(scenario())


def test_publish_flush_to_no_redis_is_an_error_naming_it():
    with pytest.raises(Exception, match="127.0.0.1:1"):
        control.publish_flush(FleetConfig(redis="redis://127.0.0.1:1/0"), None, timeout=2.0)


def test_fleet_off_by_default_changes_nothing(dns):
    engine = Engine(base_config(dns))
    assert engine.fleet is None and engine.services.fleet is None


@pytest.mark.parametrize("section, key", [
    ({"redis": "http://127.0.0.1:6379"}, "fleet.redis"),
    ({"redis": "redis://127.0.0.1", "sentinels": ["127.0.0.1:26379"]}, "fleet.redis"),
    ({"sentinels": ["127.0.0.1:notaport"]}, "fleet.sentinels[0]"),
    ({"redis": "redis://127.0.0.1", "budget_ms": 0}, "fleet.budget_ms"),
    ({"redis": "redis://127.0.0.1", "window": 5, "buckets": 10}, "fleet.buckets"),
    ({"redis": "redis://127.0.0.1", "block_after": -1}, "fleet.block_after"),
    ({"redis": "redis://127.0.0.1", "key_prefix": ""}, "fleet.key_prefix"),
    ({"redis": "redis://127.0.0.1", "block_seconds": 0}, "fleet.block_seconds"),
])
def test_config_errors_name_the_key(section, key):
    with pytest.raises(ConfigError, match=rf"{key.replace('[', '.').replace(']', '.')}"):
        from_dict({"fleet": section})


def test_config_accepts_sentinels():
    config = from_dict({"fleet": {"sentinels": ["127.0.0.1:26379", "[::1]:26380"], "service": "mymaster"}})
    assert config.fleet.enabled


@given(st.one_of(
    st.builds(Block, st.from_regex(r"(ip|net):[0-9a-f.:/]{1,43}", fullmatch=True),
              st.integers(1, 10**9), st.integers(0, 10**9)),
    st.builds(Flush, st.none() | st.from_regex(r"[a-z0-9][a-z0-9.-]{0,60}", fullmatch=True)),
))
def test_events_round_trip(event):
    assert decode_event(encode_event(event)) == event


@given(st.binary(max_size=100))
def test_decoding_any_bytes_never_raises(data):
    decode_event(data)


def test_close_ends_even_while_rejections_are_being_sent(dns, redis_server):
    # the shape that hung a worker's stop: rejections queued, the sender inside its pipeline
    # when close() cancels it (redis-py may swallow that cancellation mid-reply)
    async def go() -> None:
        engine = engine_for(dns, fleet_config(redis_server, block_after=10**9))
        assert engine.fleet is not None
        await engine.fleet.start()
        await until(lambda: engine.fleet.up, "the fleet following Redis")
        for _ in range(20):
            for _ in range(200):
                await decide(engine, LISTED)
            await asyncio.sleep(0)  # the sender's turn: its pipeline goes out
            await asyncio.wait_for(engine.fleet.close(), SECONDS)
            await engine.fleet.start()
            await until(lambda: engine.fleet.up, "the fleet following Redis again")
        await asyncio.wait_for(engine.fleet.close(), SECONDS)
    run(go())
