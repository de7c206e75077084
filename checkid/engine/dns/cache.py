"""The answer cache behind one interface, with expiry checked against a given ``now``.

:class:`MemoryCache` is the per-process layer (cachetools LRU, per-entry expiry).
:class:`LayeredCache` puts a fast layer in front of a slower shared one, so that a
cross-process layer slots in underneath without touching callers.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import cachetools


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    puts: int = 0


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
