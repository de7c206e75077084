from __future__ import annotations

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
