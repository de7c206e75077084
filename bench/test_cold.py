"""Cold decisions with instant DNS (pytest-benchmark): the engine's own CPU per cold decision.

Run: ``.venv/bin/python -m pytest bench/test_cold.py --benchmark-only --benchmark-timer=time.process_time``
(process time: a busy machine disturbs it less than the wall clock). ``bench/cold.py`` measures
the same decisions behind a 20 ms RTT, as latency in RTTs; this isolates the CPU part of what
lies above the bound (depth + 1) × RTT.

The test DNS server serves the workload's zones (``bench/workload.py``) from its own process,
answering at once, so its CPU time is not counted. Each round builds a fresh engine (not timed:
its caches are empty, so every lookup is a query) and decides BATCH senders of one group in
turn, one decision at a time, as ``bench/cold.py`` does: DNSBL-listed senders (one query), and
registered senders whose SPF chain has depth 1 (three queries: DNSBL, registry, SPF record)
or 3 (five). Divide by BATCH for one decision.
"""
from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cold import dns_server
from bench.workload import DNSBL, REGISTRY, Sender, Workload
from checkid.config import Config, DnsConfig, DnsList, PrescreenConfig, RegistryConfig
from checkid.engine.decision import Action, Envelope
from checkid.engine.engine import Engine

BATCH = 10
ROUNDS = 10


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload(senders=400, requests=0, seed=1)


@pytest.fixture(scope="module")
def address(workload: Workload) -> Iterator[str]:
    """The test DNS server on the workload's zones, in its own process, without added RTT."""
    with tempfile.TemporaryDirectory(prefix="checkid-cold-") as tmp, dns_server(workload, Path(tmp), 0.0) as addr:
        yield addr


def _group(workload: Workload, cls: str, depth: int | None = None) -> list[Sender]:
    senders = [s for s in workload.senders if s.cls == cls and (depth is None or s.spf_depth == depth)]
    assert len(senders) >= BATCH, f"the workload has too few {cls} senders of depth {depth}"
    return senders[:BATCH]


def _cold(benchmark, loop: asyncio.AbstractEventLoop, address: str, senders: list[Sender], expected: Action) -> None:
    config = Config(dns=DnsConfig(nameservers=(address,), timeout=2.0, decision_timeout=4.0),
                    registry=RegistryConfig(zone=REGISTRY), prescreen=PrescreenConfig(dnsbl=(DnsList(zone=DNSBL),)))
    engines: list[Engine] = []

    def fresh() -> tuple[tuple[Engine], dict[str, object]]:
        while engines:  # the previous round's sockets
            engines.pop().services.dns.close()
        engines.append(Engine(config))
        return (engines[0],), {}

    async def decide_all(engine: Engine) -> list[Action]:
        return [(await engine.decide(Envelope(s.ip, s.helo, sender=f"bench@{s.domain}",
                                              rcpts=("u@example.org",)))).action for s in senders]

    def run(engine: Engine) -> list[Action]:
        return loop.run_until_complete(decide_all(engine))

    engine = fresh()[0][0]
    assert run(engine) == [expected] * BATCH  # also warms lazy imports up
    queries = sum(n for key, n in engine.counts.items() if key[0] == "dns_queries")
    assert queries >= BATCH  # cold: every decision asked at least once
    benchmark.extra_info["batch"] = BATCH
    benchmark.extra_info["queries_per_decision"] = queries / BATCH
    benchmark.pedantic(run, setup=fresh, rounds=ROUNDS, iterations=1)
    fresh()
    engines.pop().services.dns.close()


def test_cold_decision_dnsbl_listed(benchmark, loop, address, workload):
    _cold(benchmark, loop, address, _group(workload, "spammer"), Action.REJECT)


def test_cold_decision_spf_depth_1(benchmark, loop, address, workload):
    _cold(benchmark, loop, address, _group(workload, "pass", 1), Action.ACCEPT)


def test_cold_decision_spf_depth_3(benchmark, loop, address, workload):
    _cold(benchmark, loop, address, _group(workload, "pass", 3), Action.ACCEPT)
