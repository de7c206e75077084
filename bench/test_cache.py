"""Cache layer cost per lookup (pytest-benchmark), beside a plain dict lookup in the same run.

Run: ``sh bench/micro``. The layers are the engine's: the per-worker memory cache (L1, an
LRU with per-entry expiry, :class:`MemoryCache`), the shared LMDB layer (L2) reached through
:class:`LayeredCache` when L1 misses (the hit is copied into L1, as in a worker), and a miss
in both. Keys and values are what the DNS client stores: ``(name, type)`` and a
:class:`DnsAnswer`.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from checkid.engine.dns.cache import LayeredCache, MemoryCache
from checkid.engine.dns.client import DnsAnswer, Outcome
from checkid.runtime.lmdbcache import LmdbCache

BATCH = 1000
KEYS = [(f"d{i}.senders.example", "TXT") for i in range(BATCH)]
ANSWER = DnsAnswer(Outcome.ANSWER, ((b"v=spf1 ip4:192.0.2.0/24 include:_spf.example.net -all",),), 3600)


@pytest.fixture
def lmdb_cache(tmp_path) -> Iterator[LmdbCache]:
    cache = LmdbCache(str(tmp_path / "cache"), 64)
    expires = time.monotonic() + 3600
    for key in KEYS:
        cache.put(key, ANSWER, expires)
    yield cache
    cache.close()


def _per_lookup(benchmark, get, expect_hit: bool) -> None:
    now = time.monotonic()
    assert all((get(k, now) is not None) is expect_hit for k in KEYS)
    benchmark.extra_info["batch"] = BATCH
    benchmark(lambda: [get(k, now) for k in KEYS])


def test_cache_l1_hit(benchmark):
    l1 = MemoryCache(10_000)
    for key in KEYS:
        l1.put(key, ANSWER, time.monotonic() + 3600)
    _per_lookup(benchmark, l1.get, True)


def test_cache_l2_hit(benchmark, lmdb_cache):
    # an L1 of one entry: every lookup of the cycle misses it and is answered by LMDB
    layered = LayeredCache(MemoryCache(1), lmdb_cache)
    _per_lookup(benchmark, layered.get, True)
    assert layered.last_layer == "l2"


def test_cache_miss_both_layers(benchmark, lmdb_cache):
    layered = LayeredCache(MemoryCache(10_000), lmdb_cache)
    lmdb_cache.flush()
    _per_lookup(benchmark, layered.get, False)


def test_reference_dict_get(benchmark):
    plain = {key: (ANSWER, time.monotonic() + 3600) for key in KEYS}
    _per_lookup(benchmark, lambda k, now: plain.get(k), True)
