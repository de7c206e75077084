"""The memory cache's hit rate by size on a border MTA's day, to choose ``[dns] cache_size`` (issue 15).

The engine in-process decides the border trace (bench/border.py) against the test DNS server
with a memory cache too large to evict, and records every lookup and store its DNS client
and checks make (key, time, expiry). The recorded lookups are then replayed against a
:class:`MemoryCache` of each size: a lookup it misses where the unbounded one hit stores the
entry again (a worker would get it from the shared LMDB layer, or from DNS without one), so
each size sees the same stream of questions a worker of that size would.

The trace's day runs in minutes and its TTLs (bench/border.py) outlast it: nothing expires,
so the figures are what the size alone costs. The memo's hits (a warm decision repeated)
ask the cache nothing and are not in the stream.

    .venv/bin/python -m bench.cachehits [--messages 100000] [--sizes 25000,50000,100000,200000]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import uvloop

from bench.border import BorderWorkload
from bench.cold import dns_server
from bench.workload import DNSBL, REGISTRY
from checkid.config import Config, DnsConfig, DnsList, PrescreenConfig, RegistryConfig
from checkid.engine.decision import Envelope
from checkid.engine.dns.cache import CacheStats, MemoryCache
from checkid.engine.engine import Engine

#: decisions in flight at once (a worker's concurrent connections)
CONCURRENCY = 64
#: what the recording cache's unbounded layer may hold (more than any trace here makes)
UNBOUNDED = 10**8


class RecordingCache:
    """An unbounded memory cache that writes down every lookup and store."""

    def __init__(self) -> None:
        self.inner = MemoryCache(UNBOUNDED)
        self.stats: CacheStats = self.inner.stats
        #: ("get", key, now) and ("put", key, (value, expires)), in order
        self.log: list[tuple[str, Hashable, Any]] = []

    def get(self, key: Hashable, now: float) -> Any | None:
        entry = self.get_entry(key, now)
        return None if entry is None else entry[0]

    def get_entry(self, key: Hashable, now: float) -> tuple[Any, float] | None:
        self.log.append(("get", key, now))
        return self.inner.get_entry(key, now)

    def put(self, key: Hashable, value: Any, expires: float) -> None:
        self.log.append(("put", key, (value, expires)))
        self.inner.put(key, value, expires)

    def flush(self) -> None:
        self.inner.flush()

    def __len__(self) -> int:
        return len(self.inner)


def record(messages: int, domains: int = 30_000, seed: int = 1) -> tuple[list[tuple[str, Hashable, Any]], int]:
    """The cache's log over the whole border trace, and how many decisions made it."""
    workload = BorderWorkload(messages, domains, seed)
    cache = RecordingCache()
    with tempfile.TemporaryDirectory(prefix="checkid-hits-") as tmp, \
            dns_server(workload, Path(tmp), 0.0) as address:  # type: ignore[arg-type]
        config = Config(dns=DnsConfig(nameservers=(address,)), registry=RegistryConfig(zone=REGISTRY),
                        prescreen=PrescreenConfig(dnsbl=(DnsList(zone=DNSBL),)))

        async def run() -> None:
            engine = Engine(config, cache=cache)
            requests = iter(workload.requests)

            async def client() -> None:
                for r in requests:
                    await engine.decide(Envelope(ip=r.ip, helo=r.helo, sender=r.sender, rcpts=(r.rcpt,)))

            await asyncio.gather(*(client() for _ in range(CONCURRENCY)))

        uvloop.run(run())
    return cache.log, len(workload.requests)


def replay(log: list[tuple[str, Hashable, Any]], size: int) -> tuple[int, int]:
    """(hits, lookups) of a memory cache of ``size`` entries asked what the log asked."""
    cache = MemoryCache(size)
    latest: dict[Hashable, tuple[Any, float]] = {}
    hits = lookups = 0
    for op, key, arg in log:
        if op == "put":
            latest[key] = arg
            cache.put(key, *arg)
            continue
        lookups += 1
        if cache.get_entry(key, arg) is not None:
            hits += 1
        elif key in latest and latest[key][1] > arg:
            cache.put(key, *latest[key])  # what the unbounded cache had: L2 or DNS brings it back
    return hits, lookups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=30_000)
    parser.add_argument("--sizes", default="10000,25000,50000,100000,200000")
    args = parser.parse_args()
    start = time.process_time()
    log, requests = record(args.messages, args.domains)
    distinct = len({key for _, key, _ in log})
    print(f"{requests:,} requests ({args.messages:,} messages, {args.domains:,} domains): "
          f"{sum(op == 'get' for op, _, _ in log):,} lookups of {distinct:,} distinct keys "
          f"({time.process_time() - start:.0f} s CPU to record)")
    unbounded, lookups = replay(log, UNBOUNDED)
    print(f"  unbounded: hit rate {unbounded / lookups:.1%}")
    for size in (int(s) for s in args.sizes.split(",")):
        hits, lookups = replay(log, size)
        print(f"  {size:>9,} entries: hit rate {hits / lookups:.1%} "
              f"({(unbounded - hits) / lookups:.1%} of lookups go to the layer behind)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
