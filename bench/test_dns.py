"""Cold DNS query cost (pytest-benchmark): checkid's client on its persistent UDP sockets,
beside dnspython's async resolver opening a socket per query, in the same run.

Run: ``.venv/bin/python -m pytest bench/test_dns.py --benchmark-only`` (add
``--benchmark-timer=time.process_time`` for CPU time, which a busy machine disturbs less
than the wall clock). The test DNS server runs in its own process, so only the client's
work is timed (CPU), or the client's work plus loopback round trips (wall). Each round asks
BATCH queries in turn on one uvloop loop, every one a cache miss (TTLs clamped to 0);
divide by BATCH for one query.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.asyncresolver
import dns.nameserver
import pytest

from checkid.config import DnsConfig
from checkid.engine.dns.cache import MemoryCache
from checkid.engine.dns.client import DnsClient, Outcome
from testsupport.processes import free_port

BATCH = 100
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    """The test DNS server in its own process (its CPU time is not the client's)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "testsupport.dnsserver", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith("serving"):
            raise RuntimeError("the test DNS server did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_dns_cold_query_checkid_client(benchmark, loop, server_port):
    client = DnsClient(DnsConfig(nameservers=(f"127.0.0.1:{server_port}",), timeout=2.0, min_ttl=0, max_ttl=0),
                       MemoryCache(16))

    async def many() -> Outcome:
        for _ in range(BATCH):
            answer = await client.resolve("example.com", "TXT")
        return answer.outcome

    assert loop.run_until_complete(many()) is Outcome.ANSWER
    assert client.counts[("cache_lookups", "all", "miss")] == BATCH  # every one a query
    benchmark.extra_info["batch"] = BATCH
    benchmark(lambda: loop.run_until_complete(many()))
    client.close()


def test_dns_cold_query_reference_dnspython_socket_per_query(benchmark, loop, server_port):
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", server_port)]
    resolver.cache = None

    async def many() -> int:
        for _ in range(BATCH):
            answer = await resolver.resolve("example.com", "TXT")
        return len(answer)

    assert loop.run_until_complete(many()) == 1
    benchmark.extra_info["batch"] = BATCH
    benchmark(lambda: loop.run_until_complete(many()))
