"""Per-decision latency (pytest-benchmark), beside a reference measured in the same run.

Run: ``.venv/bin/python -m pytest bench/test_latency.py --benchmark-only`` (or
``sh bench/micro`` to also write the table for bench/RESULTS.md).

Each round runs BATCH decisions inside one task on a uvloop loop, so the figures are per
round; divide by BATCH (the report does) for one decision. The reference is pyspf's own
check of the same SPF record with instant DNS (a dict behind ``spf.DNSLookup``): the cost of
SPF evaluation alone, which a warm checkid decision must beat by caching results.
"""
from __future__ import annotations

import spf

from checkid.engine.decision import Action, Envelope
from checkid.engine.engine import Engine
from testsupport.config import base_config

BATCH = 100


def _batch(loop, engine, env, expected):
    async def many():
        for _ in range(BATCH):
            d = await engine.decide(env)
        return d

    decision = loop.run_until_complete(many())  # warm the caches
    assert decision.action is expected
    return lambda: loop.run_until_complete(many())


def test_warm_decision_registered_id_spf_pass(benchmark, server, loop):
    engine = Engine(base_config(server))
    run = _batch(loop, engine, Envelope("192.0.2.1", "example.com"), Action.ACCEPT)
    asked = server.total
    benchmark.extra_info["batch"] = BATCH
    benchmark(run)
    assert server.total == asked  # warm: no DNS query during the measurement


def test_warm_decision_prescreen_reject(benchmark, server, loop):
    engine = Engine(base_config(server))
    run = _batch(loop, engine, Envelope("203.0.113.10", "example.com"), Action.REJECT)
    benchmark.extra_info["batch"] = BATCH
    benchmark(run)


def test_reference_pyspf_check_with_instant_dns(benchmark):
    answers = {("example.com", "TXT"): [(("example.com", "TXT"), (b"v=spf1 ip4:192.0.2.0/24 -all",))]}
    saved = spf.DNSLookup
    spf.DNSLookup = lambda name, qtype, *a: answers.get((name, qtype), [])

    def many():
        for _ in range(BATCH):
            res = spf.query(i="192.0.2.1", s="postmaster@example.com", h="example.com").check()
        return res

    try:
        assert many()[0] == "pass"
        benchmark.extra_info["batch"] = BATCH
        benchmark(many)
    finally:
        spf.DNSLookup = saved  # checkid's checks never use it, but other users of pyspf may
