from __future__ import annotations

import dataclasses
from typing import ClassVar

from checkid.engine.dns.cache import LayeredCache, MemoryCache


def test_memory_cache_expires_entries_at_their_own_time():
    cache = MemoryCache(10)
    cache.put("a", 1, expires=100.0)
    cache.put("b", 2, expires=200.0)
    assert cache.get("a", 99.9) == 1
    assert cache.get("a", 100.0) is None
    assert cache.get("b", 150.0) == 2
    assert (cache.stats.hits, cache.stats.misses) == (2, 1)


def test_memory_cache_is_bounded_and_evicts_least_recently_used():
    cache = MemoryCache(2)
    cache.put("a", 1, 1e9)
    cache.put("b", 2, 1e9)
    cache.get("a", 0)
    cache.put("c", 3, 1e9)
    assert len(cache) == 2
    assert cache.get("b", 0) is None and cache.get("a", 0) == 1 and cache.get("c", 0) == 3


def test_layered_cache_promotes_back_hits_with_their_expiry():
    front, back = MemoryCache(10), MemoryCache(10)
    layered = LayeredCache(front, back)
    back.put("k", "v", expires=50.0)
    assert front.get("k", 0) is None
    assert layered.get("k", 10.0) == "v"
    assert front.get_entry("k", 10.0) == ("v", 50.0)
    layered.put("x", "y", 60.0)
    assert back.get("x", 0) == "y" and front.get("x", 0) == "y"
    layered.flush()
    assert layered.get("x", 0) is None


def test_memory_cache_stores_equal_values_once():
    from checkid.engine.dns.client import DnsAnswer, Outcome

    cache = MemoryCache(10)
    cache.put(("1.0.0.127.dnsbl.example", "A"), DnsAnswer(Outcome.NXDOMAIN, (), 3600), 100.0)
    cache.put(("2.0.0.127.dnsbl.example", "A"), DnsAnswer(Outcome.NXDOMAIN, (), 3600), 200.0)
    cache.put(("3.0.0.127.dnsbl.example", "A"), DnsAnswer(Outcome.NXDOMAIN, (), 60), 200.0)
    first = cache.get(("1.0.0.127.dnsbl.example", "A"), 0)
    assert first is cache.get(("2.0.0.127.dnsbl.example", "A"), 0)
    assert cache.get(("3.0.0.127.dnsbl.example", "A"), 0) == DnsAnswer(Outcome.NXDOMAIN, (), 60)
    # each entry keeps its own expiry
    assert cache.get(("1.0.0.127.dnsbl.example", "A"), 150.0) is None
    assert cache.get(("2.0.0.127.dnsbl.example", "A"), 150.0) == DnsAnswer(Outcome.NXDOMAIN, (), 3600)


@dataclasses.dataclass(frozen=True)
class Shareable:
    value: object
    SHAREABLE: ClassVar[bool] = True


def test_memory_cache_shares_only_values_of_a_type_that_says_equal_means_the_same():
    cache = MemoryCache(10)
    cache.put("a", (1,), 1e9)
    cache.put("b", (True,), 1e9)  # equal to (1,), and hashes the same, but not the same value
    cache.put("c", [1, 2], 1e9)
    cache.put("d", Shareable("x"), 1e9)
    cache.put("e", Shareable("x"), 1e9)
    assert repr(cache.get("b", 0)) == "(True,)" and repr(cache.get("a", 0)) == "(1,)"
    assert cache.get("c", 0) == [1, 2]
    assert cache.get("d", 0) is cache.get("e", 0)


def test_memory_cache_sharing_table_is_bounded():
    cache = MemoryCache(100, shared_values=4)
    for i in range(50):
        cache.put(i, Shareable(i), 1e9)
        assert len(cache._shared) <= 4
    assert [cache.get(i, 0) for i in range(50)] == [Shareable(i) for i in range(50)]
