"""Decisions refused by a fleet block are memoized, and never outlive the block: a lapsed
block, a new block, a flush or a policy reload each get a fresh decision (an injected clock; no
Redis needed: blocks are learned locally, as the channel would deliver them)."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from checkid.config import PolicyConfig
from checkid.config.fleet import FleetConfig
from checkid.engine.decision import Action, Envelope
from checkid.engine.engine import Engine
from checkid.engine.fleet import FLEET_LIST
from checkid.engine.policy import DEFAULT_PATH
from testsupport.config import base_config

#: the default policy, counting its runs in ``CALLS``
COUNTING = DEFAULT_PATH.read_text() + """
CALLS = []
_decide = decide


async def decide(ctx):
    CALLS.append(ctx.envelope)
    return await _decide(ctx)
"""
#: a policy that accepts everyone (what a reload may bring)
LENIENT = """from checkid.engine.policyapi import Auth, Result

DECISION_INPUTS = ("ip",)
CALLS = []


async def decide(ctx):
    CALLS.append(ctx.envelope)
    return ctx.accept("policy", Auth(Result.PASS, "LENIENT"))
"""
CLIENT = "198.51.100.7"  # on no list: only a fleet block refuses it
LISTED = "203.0.113.10"  # on the test zen.spamhaus.org
ENV = Envelope(CLIENT, helo="example.com", sender="a@example.com", rcpts=("bob@example.org",),
               message_follows=False)
BLOCK_SECONDS = 60


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def engine_with(dns, tmp_path: Path, clock: Clock, source: str = COUNTING) -> Engine:
    path = tmp_path / "policy.py"
    path.write_text(source)
    # never started: no Redis is asked; the blocks are learned by hand
    fleet = FleetConfig(redis="redis://127.0.0.1:1/0", block_after=3, block_seconds=BLOCK_SECONDS)
    config = dataclasses.replace(base_config(dns), fleet=fleet, policy=PolicyConfig(path=str(path)))
    return Engine(config, clock=clock)


def calls(engine: Engine) -> int:
    return len(engine.policy.current.module.CALLS)


def decide(engine: Engine, env: Envelope = ENV, n: int = 1):
    async def go():
        return [await engine.decide(env) for _ in range(n)]
    return asyncio.run(go())


def blocked(decision) -> bool:
    return decision.action is Action.REJECT and FLEET_LIST in decision.text


def test_a_fleet_block_refusal_is_memoized_until_the_block_lapses_and_no_longer(dns, tmp_path):
    clock = Clock()
    engine = engine_with(dns, tmp_path, clock)
    engine.fleet.learn("ip:" + CLIENT, BLOCK_SECONDS, 5)
    decisions = decide(engine, n=5)
    assert all(blocked(d) for d in decisions) and calls(engine) == 1
    assert engine.counts[("list_hits", "prescreen", FLEET_LIST)] == 5  # counted per request all the same
    clock.now += BLOCK_SECONDS - 1
    assert blocked(decide(engine)[0]) and calls(engine) == 1
    clock.now += 1  # the block's last instant: lapsed
    after = decide(engine)[0]
    assert not blocked(after) and calls(engine) == 2


def test_a_prefix_block_refusal_lasts_as_long_as_the_prefix_block(dns, tmp_path):
    clock = Clock()
    engine = engine_with(dns, tmp_path, clock)
    engine.fleet.learn("net:198.51.100.0/24", 10, 7)
    assert blocked(decide(engine, n=3)[-1]) and calls(engine) == 1
    clock.now += 10
    assert not blocked(decide(engine)[0]) and calls(engine) == 2


def test_a_policy_reload_never_serves_the_old_policy_s_fleet_refusal(dns, tmp_path):
    clock = Clock()
    engine = engine_with(dns, tmp_path, clock)
    engine.fleet.learn("ip:" + CLIENT, BLOCK_SECONDS, 5)
    assert blocked(decide(engine, n=2)[-1]) and calls(engine) == 1
    (tmp_path / "policy.py").write_text(LENIENT)
    engine.policy.reload()
    decisions = decide(engine, n=3)
    assert [d.action for d in decisions] == [Action.ACCEPT] * 3
    assert calls(engine) == 1  # the new policy ran, then its own decision was memoized


def test_a_block_learned_drops_a_decision_memoized_before_it(dns, tmp_path):
    clock = Clock()
    engine = engine_with(dns, tmp_path, clock)
    first = decide(engine, n=3)
    assert not any(blocked(d) for d in first)
    engine.fleet.learn("ip:" + CLIENT, BLOCK_SECONDS, 5)
    assert blocked(decide(engine)[0])


def test_a_flush_drops_a_memoized_fleet_refusal(dns, tmp_path):
    clock = Clock()
    engine = engine_with(dns, tmp_path, clock)
    engine.fleet.learn("ip:" + CLIENT, BLOCK_SECONDS, 5)
    decide(engine, n=2)
    assert calls(engine) == 1
    engine.forget_decisions()  # what every flush, local or the fleet's, does
    assert blocked(decide(engine)[0]) and calls(engine) == 2


def test_refusals_of_a_blocked_client_are_not_counted_memoized_or_not(dns, tmp_path):
    clock = Clock()
    engine = engine_with(dns, tmp_path, clock)
    not_sent = ("fleet_fallbacks", "count")  # the fleet is not up: a rejection counted goes here
    decide(engine, Envelope(LISTED, helo="example.com"), n=3)
    assert engine.counts[not_sent] == 3  # the DNSBL's refusals are counted, memo hits included
    engine.fleet.learn("ip:" + LISTED, BLOCK_SECONDS, 5)
    engine.fleet.learn("ip:" + CLIENT, BLOCK_SECONDS, 5)
    decide(engine, Envelope(LISTED, helo="example.com"), n=3)
    decide(engine, n=3)
    assert engine.counts[not_sent] == 3
    clock.now += BLOCK_SECONDS
    decide(engine, Envelope(LISTED, helo="example.com"), n=2)
    assert engine.counts[not_sent] == 5
