"""The answer cache behind one interface, with expiry checked against a given ``now``.

:class:`MemoryCache` is the per-process layer (cachetools LRU, per-entry expiry).
:class:`LayeredCache` puts a fast layer in front of a slower shared one, so that a
cross-process layer slots in underneath without touching callers.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import cachetools


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    puts: int = 0


def mentions(key: Hashable, name: str) -> bool:
    """Whether the cache key ``key`` is about the DNS name ``name`` or a name under it: an
    answer (``(name, type)``), or an SPF result for it as the sender domain or the HELO name
    (``("spf", ip, domain)``, ``("spf", ip, sender, helo)``). For flushing one name."""
    name = name.lower().rstrip(".")
    if not isinstance(key, tuple):
        return False
    if len(key) == 2:
        return isinstance(key[0], str) and _under(key[0], name)
    if len(key) in (3, 4) and key[0] == "spf":
        return any(isinstance(part, str) and _under(part.lower().rpartition("@")[2], name) for part in key[2:])
    return False


def _under(owner: str, name: str) -> bool:
    return owner == name or owner.endswith("." + name)


class Cache(Protocol):
    """What the engine needs of a cache layer."""

    stats: CacheStats

    def get(self, key: Hashable, now: float) -> Any | None:
        """The live value under ``key``, or None when absent or expired at ``now``."""

    def get_entry(self, key: Hashable, now: float) -> tuple[Any, float] | None:
        """Like :meth:`get` but with the expiry, for promotion into a faster layer."""

    def put(self, key: Hashable, value: Any, expires: float) -> None:
        """Store ``value`` until the monotonic time ``expires``."""

    def flush(self) -> None:
        """Drop every entry."""


class MemoryCache:
    """A bounded in-process LRU whose entries each carry their own expiry."""

    def __init__(self, maxsize: int) -> None:
        self._data: cachetools.LRUCache[Hashable, tuple[Any, float]] = cachetools.LRUCache(max(1, maxsize))
        self.stats = CacheStats()

    def get(self, key: Hashable, now: float) -> Any | None:
        entry = self.get_entry(key, now)
        return None if entry is None else entry[0]

    def get_entry(self, key: Hashable, now: float) -> tuple[Any, float] | None:
        entry = self._data.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        if entry[1] <= now:
            del self._data[key]
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return entry

    def put(self, key: Hashable, value: Any, expires: float) -> None:
        self.stats.puts += 1
        self._data[key] = (value, expires)

    def flush(self) -> None:
        self._data.clear()

    def drop(self, matches: Callable[[Hashable], bool]) -> int:
        """Remove every entry whose key ``matches``; returns how many went."""
        victims = [key for key in self._data if matches(key)]
        for key in victims:
            del self._data[key]
        return len(victims)

    def __len__(self) -> int:
        return len(self._data)


class LayeredCache:
    """``front`` answers first; a ``back`` hit is copied into ``front``; puts go to both."""

    def __init__(self, front: Cache, back: Cache) -> None:
        self.front = front
        self.back = back
        self.stats = CacheStats()
        #: the layer that answered the last lookup: "l1" or "l2"
        self.last_layer = "l1"

    def get(self, key: Hashable, now: float) -> Any | None:
        entry = self.get_entry(key, now)
        return None if entry is None else entry[0]

    def get_entry(self, key: Hashable, now: float) -> tuple[Any, float] | None:
        entry = self.front.get_entry(key, now)
        self.last_layer = "l1"
        if entry is None:
            entry = self.back.get_entry(key, now)
            self.last_layer = "l2"
            if entry is not None:
                self.front.put(key, *entry)
        if entry is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return entry

    def put(self, key: Hashable, value: Any, expires: float) -> None:
        self.stats.puts += 1
        self.front.put(key, value, expires)
        self.back.put(key, value, expires)

    def flush(self) -> None:
        self.front.flush()
        self.back.flush()
