"""What the worker's heap trim costs (pytest-benchmark), beside the heartbeat the same tick writes.

Run: ``sh bench/micro``. The worker calls ``malloc_trim(0)`` every ``TRIM_SECONDS`` from its
tick (:mod:`checkid.runtime.worker`); here the heap holds a memory cache filled to the
default size with DNS answers, the state in which a trim walks the most.
"""
from __future__ import annotations

import os
import time

import pytest

from checkid.config import DnsConfig
from checkid.engine.dns.cache import MemoryCache
from checkid.engine.dns.client import DnsAnswer, Outcome
from checkid.runtime.worker import heap_trimmer

trim = heap_trimmer()


@pytest.fixture(scope="module")
def full_cache() -> MemoryCache:
    size = DnsConfig().cache_size
    cache = MemoryCache(size)
    expires = time.monotonic() + 86400
    for i in range(size):
        cache.put((f"{i & 255}.{i >> 8 & 255}.{i >> 16}.100.dnsbl.example", "A"),
                  DnsAnswer(Outcome.NXDOMAIN, (), 3600), expires)
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
