"""The answer cache behind one interface, with expiry checked against a given ``now``.

:class:`MemoryCache` is the per-process layer (an LRU with per-entry expiry, equal values
stored once).
:class:`LayeredCache` puts a fast layer in front of a slower shared one, so that a
cross-process layer slots in underneath without touching callers.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

#: distinct values :class:`MemoryCache` remembers for sharing; past it, it starts afresh
SHARED_VALUES = 1024


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
    """A bounded in-process LRU whose entries each carry their own expiry.

    The worker's memory budget is mostly this cache's entries (issue 15), so each costs as
    little as it can: one ``OrderedDict`` (key -> ``(value, expires)``, least recently used
    first; cachetools' LRU keeps a second dict beside it, and a plain dict's eviction from
    the front gets slower with every deletion), and values shared: a value equal to one
    stored recently (the same NXDOMAIN for thousands of DNSBL names, the same SPF pass) is
    stored as that one object. The values are immutable (frozen dataclasses of tuples), so
    sharing them is invisible to readers.
    """

    def __init__(self, maxsize: int, shared_values: int = SHARED_VALUES) -> None:
        self.maxsize = max(1, maxsize)
        self._data: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
        #: value -> the instance of it the entries share; bounded, cleared when full (a
        #: value still shared stays shared: only later puts of it make a new instance)
        self._shared: dict[Any, Any] = {}
        self._shared_max = max(0, shared_values)
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
        self._data.move_to_end(key)
        self.stats.hits += 1
        return entry

    def put(self, key: Hashable, value: Any, expires: float) -> None:
        self.stats.puts += 1
        data = self._data
        data[key] = (self._share(value), expires)
        data.move_to_end(key)
        if len(data) > self.maxsize:
            data.popitem(last=False)

    def _share(self, value: Any) -> Any:
        """The stored instance equal to ``value`` (of its type), else ``value``, now stored.

        Only for a type that says equal means the same (``SHAREABLE = True``: the DNS answers
        and SPF outcomes, built of strings, bytes, ints and enums): ``(1,)`` equals ``(True,)``
        and ``(0.0,)`` equals ``(-0.0,)``, so sharing any tuple would hand one's reader the
        other."""
        if not self._shared_max or not getattr(type(value), "SHAREABLE", False):
            return value
        shared = self._shared
        try:
            known = shared.get(value)
        except TypeError:  # unhashable: stored as it is
            return value
        if known is not None and type(known) is type(value):
            return known
        if len(shared) >= self._shared_max:
            shared.clear()
        shared[value] = value
        return value

    def flush(self) -> None:
        self._data.clear()
        self._shared.clear()

    def drop(self, matches: Callable[[Hashable], bool]) -> int:
        """Remove every entry whose key ``matches``; returns how many went."""
        victims = [key for key in self._data if matches(key)]
        for key in victims:
            del self._data[key]
        return len(victims)

    def keys(self) -> list[Hashable]:
        """The keys, least recently used first (for tools and tests)."""
        return list(self._data)

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
