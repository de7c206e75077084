"""What the worker's heap trim costs (pytest-benchmark), beside the heartbeat the same tick writes.

Run: ``sh bench/micro``. The worker calls ``malloc_trim(0)`` every ``TRIM_SECONDS`` from its
tick (:mod:`checkid.runtime.worker`); here the heap holds a memory cache filled to the
default size with the border trace's mix of entries (bench/workermem.py: DNSBL answers, SPF
records and results, registry records, each key and value made afresh as the DNS client
makes them), the state in which a trim walks the most.
"""
from __future__ import annotations

import os
import time

import pytest

from bench.workermem import MIX, border_entry
from checkid.config import DnsConfig
from checkid.engine.dns.cache import MemoryCache
from checkid.runtime.worker import heap_trimmer

trim = heap_trimmer()


@pytest.fixture(scope="module")
def full_cache() -> MemoryCache:
    size = DnsConfig().cache_size
    cache = MemoryCache(size)
    expires = time.monotonic() + 86400
    kinds = [kind for kind, share in MIX for _ in range(round(share * 100))]
    for i in range(size):
        cache.put(*border_entry(kinds[i % len(kinds)], i), expires)
    return cache


@pytest.mark.skipif(trim is None, reason="no glibc malloc_trim")
def test_worker_heap_trim_full_cache(benchmark, full_cache):
    assert len(full_cache) == DnsConfig().cache_size
    benchmark.extra_info["batch"] = 1
    benchmark(trim)


def test_reference_heartbeat_write(benchmark, tmp_path):
    fd = os.open(tmp_path / "heartbeat", os.O_RDWR | os.O_CREAT, 0o600)
    benchmark.extra_info["batch"] = 1

    def beat() -> None:
        os.pwrite(fd, b"serving 0 100000\n", 0)
        now = time.monotonic()
        os.utime(fd, (now, now))

    try:
        benchmark(beat)
    finally:
        os.close(fd)
