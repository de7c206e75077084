"""The decision memo: exact (never past the earliest expiry of what a decision used), dropped
on a policy reload and a cache flush, counted per request, and only for a policy that
declares its inputs."""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkid.config import PolicyConfig, ReputationConfig
from checkid.engine.decision import Action, Envelope
from checkid.engine.engine import Engine
from checkid.engine.policy import DEFAULT_PATH, compile_policy
from checkid.engine.trace import Trace
from checkid.errors import PolicyError
from tests.conftest import ZONES, base_config
from testsupport.dnsserver import TestDnsServer

DEFAULT = DEFAULT_PATH.read_text()
#: the default policy, counting its runs in ``CALLS``
COUNTING = DEFAULT + """
CALLS = []
_decide = decide


async def decide(ctx):
    CALLS.append(ctx.envelope)
    return await _decide(ctx)
"""
#: the same without DECISION_INPUTS: it never opts in
UNDECLARED = "\n".join(line for line in COUNTING.splitlines() if not line.startswith("DECISION_INPUTS"))

ENV = Envelope("192.0.2.1", helo="example.com", sender="a@example.com", rcpts=("bob@example.org",),
               message_follows=False)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def own_dns_server() -> Iterator[TestDnsServer]:
    """A test DNS server of this module's own: the tests compare query counts, which a daemon
    or engine of another test still asking the shared one would disturb."""
    with TestDnsServer(ZONES) as server:
        yield server


@pytest.fixture
def dns(own_dns_server: TestDnsServer) -> Iterator[TestDnsServer]:
    own_dns_server.reset_counts()
    own_dns_server.clear_faults()
    yield own_dns_server
    own_dns_server.clear_faults()


def engine_with(dns, tmp_path: Path, source: str, name: str = "policy.py", **kwargs) -> Engine:
    path = tmp_path / name
    path.write_text(source)
    config = dataclasses.replace(base_config(dns, **kwargs.pop("sections", {})), policy=PolicyConfig(path=str(path)))
    return Engine(config, **kwargs)


def calls(engine: Engine) -> int:
    return len(engine.policy.current.module.CALLS)


def decide_all(engine: Engine, envelopes, trace: Trace | None = None):
    async def go():
        decisions = [await engine.decide(env, trace) for env in envelopes]
        # lookups a decision started ahead and did not wait for (an SPF include it never
        # reached) land before the run ends: cancelled by asyncio.run instead, whether the
        # server counted them yet would depend on the machine's speed
        await asyncio.gather(*engine.services.dns._inflight.values(), return_exceptions=True)
        return decisions
    return asyncio.run(go())


def test_default_policy_declares_its_inputs():
    assert compile_policy(DEFAULT_PATH, DEFAULT.encode()).inputs == {"ip", "helo", "sender", "recipient_class"}


def test_memo_answers_the_same_inputs_without_running_the_policy(dns, tmp_path):
    engine = engine_with(dns, tmp_path, COUNTING)
    plain = engine_with(dns, tmp_path, UNDECLARED, "plain.py")
    first, warm, *memoized = decide_all(engine, [ENV] * 5)
    assert first.action is Action.ACCEPT
    assert calls(engine) == 2  # cold (it waited for DNS: not kept), then warm (kept)
    assert memoized == [warm] * 3 and warm == first
    # the counters read as if every decision had run
    assert decide_all(plain, [ENV] * 5) == [first] * 5 and calls(plain) == 5
    assert engine.counts == plain.counts


def test_a_policy_that_declares_nothing_runs_for_every_decision(dns, tmp_path):
    engine = engine_with(dns, tmp_path, UNDECLARED)
    decide_all(engine, [ENV] * 4)
    assert calls(engine) == 4


def test_memo_never_outlives_the_earliest_expiry_of_what_it_used(dns, tmp_path):
    clock = Clock()
    engine = engine_with(dns, tmp_path, COUNTING, clock=clock)
    plain = engine_with(dns, tmp_path, UNDECLARED, "plain.py", clock=clock)
    decide_all(engine, [ENV])
    decide_all(plain, [ENV])
    hits = 0
    for _ in range(700):  # past every TTL of the answers used (a DNSBL NXDOMAIN: 60 s; 3600 s)
        clock.now += 7
        before_calls, before_queries = calls(engine), dns.total
        decision, = decide_all(engine, [ENV])
        asked = dns.total - before_queries
        if asked:  # an answer had expired: the memo must not have answered
            assert calls(engine) == before_calls + 1
        hits += calls(engine) == before_calls
        before_queries = dns.total
        assert decide_all(plain, [ENV]) == [decision]
        assert dns.total - before_queries == asked  # each asks again exactly when the other does
    assert 0 < hits < 700
    assert engine.counts == plain.counts


def test_memo_is_dropped_when_the_policy_is_reloaded(dns, tmp_path):
    engine = engine_with(dns, tmp_path, COUNTING)
    decide_all(engine, [ENV] * 3)
    assert calls(engine) == 2
    (tmp_path / "policy.py").write_text(COUNTING + "\n# an edit\n")
    engine.policy.reload()
    decide_all(engine, [ENV] * 3)
    assert calls(engine) == 1  # the new policy ran once (all warm), then the memo answered
    (tmp_path / "policy.py").write_text(UNDECLARED)
    engine.policy.reload()
    decide_all(engine, [ENV] * 3)
    assert calls(engine) == 3


def test_memo_is_dropped_on_a_cache_flush(dns, tmp_path):
    engine = engine_with(dns, tmp_path, COUNTING)
    decide_all(engine, [ENV] * 3)
    assert calls(engine) == 2
    engine.cache.flush()
    engine.forget_decisions()  # what the worker does after flushing its memory layer
    asked = dns.total
    decide_all(engine, [ENV] * 3)
    assert dns.total > asked and calls(engine) == 4  # cold again, then warm, then the memo


def test_recipients_of_one_class_share_a_memoized_decision_others_get_their_own(dns, tmp_path):
    table = tmp_path / "thresholds"
    table.write_text("strict@example.org accept_avg=10\n")
    sections = {"reputation": ReputationConfig(recipient_thresholds=str(table))}
    engine = engine_with(dns, tmp_path, COUNTING, sections=sections)
    plain = engine_with(dns, tmp_path, UNDECLARED, "plain.py", sections=sections)
    envs = [dataclasses.replace(ENV, rcpts=(r,)) for r in
            ("bob@example.org", "bob@example.org", "carol@example.org", "strict@example.org", "dave@example.org")]
    decisions = decide_all(engine, envs)
    assert decisions == decide_all(plain, envs)
    assert decisions[3].action is Action.FILTER and decisions[4].action is Action.ACCEPT
    assert calls(engine) == 3  # cold, warm (kept for class ""), strict's own; carol and dave from the memo
    assert [e.rcpts for e in engine.policy.current.module.CALLS] == [
        ("bob@example.org",), ("bob@example.org",), ("strict@example.org",)]


def test_a_traced_decision_runs_the_policy_and_traces_every_stage(dns, tmp_path):
    engine = engine_with(dns, tmp_path, COUNTING)
    decide_all(engine, [ENV] * 3)
    trace = Trace()
    decide_all(engine, [ENV], trace)
    assert calls(engine) == 3 and any(stage == "prescreen" for stage, _ in trace.lines)


def test_an_end_of_data_decision_is_never_memoized(dns, tmp_path):
    engine = engine_with(dns, tmp_path, COUNTING)
    env = dataclasses.replace(ENV, headers=(("From", " a@example.com"),), body=b"hi\r\n", message_follows=True)
    decide_all(engine, [env] * 3)
    assert calls(engine) == 3


@pytest.mark.parametrize("declared, message", [
    ('"ip"', "must be a list"),
    ('("ip", "colour")', "unknown input 'colour'"),
])
def test_a_bad_input_declaration_is_refused(tmp_path, declared, message):
    with pytest.raises(PolicyError, match=message):
        compile_policy(tmp_path / "p.py", (DEFAULT + f"\nDECISION_INPUTS = {declared}\n").encode())
