"""The memory cache against a reference model of an LRU with per-entry expiry (hypothesis,
stateful, with the clock given to every call)."""
from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from checkid.engine.dns.cache import MemoryCache

KEYS = st.sampled_from([("a.example", "A"), ("b.example", "TXT"), ("spf", "192.0.2.1", "c.example"), "d", 5])
VALUES = st.one_of(st.integers(0, 3), st.sampled_from(["x", "y"]), st.tuples(st.integers(0, 2)),
                   # equal and hashing alike, yet different inside: sharing must not mix them
                   st.tuples(st.sampled_from([1, True, 1.0, 0.0, -0.0])))


def same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (tuples), signs of zero included."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b) and repr(a) == repr(b)


class Reference:
    """The specification, written plainly: a list of [key, value, expires], least recently used first."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.entries: list[list[object]] = []

    def find(self, key: object) -> int | None:
        for i, (k, _, _) in enumerate(self.entries):
            if k == key and type(k) is type(key):
                return i
        return None

    def get(self, key: object, now: float) -> object | None:
        i = self.find(key)
        if i is None:
            return None
        entry = self.entries.pop(i)
        if entry[2] <= now:  # type: ignore[operator]
            return None
        self.entries.append(entry)
        return entry[1]

    def put(self, key: object, value: object, expires: float) -> None:
        i = self.find(key)
        if i is not None:
            self.entries.pop(i)
        self.entries.append([key, value, expires])
        if len(self.entries) > self.maxsize:
            self.entries.pop(0)


class MemoryCacheMachine(RuleBasedStateMachine):
    @initialize(maxsize=st.integers(1, 4), shared=st.integers(0, 3))
    def start(self, maxsize: int, shared: int) -> None:
        self.cache = MemoryCache(maxsize, shared_values=shared)
        self.model = Reference(maxsize)
        self.now = 0.0
        self.hits = self.misses = self.puts = 0

    @rule(seconds=st.floats(0, 20))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule(key=KEYS, value=VALUES, ttl=st.floats(0, 30))
    def put(self, key: object, value: object, ttl: float) -> None:
        self.cache.put(key, value, self.now + ttl)
        self.model.put(key, value, self.now + ttl)
        self.puts += 1

    @rule(key=KEYS)
    def get(self, key: object) -> None:
        expected = self.model.get(key, self.now)
        got = self.cache.get(key, self.now)
        assert same(got, expected)
        if expected is None:
            self.misses += 1
        else:
            self.hits += 1

    @rule(key=KEYS)
    def drop(self, key: object) -> None:
        gone = self.cache.drop(lambda k: k == key and type(k) is type(key))
        i = self.model.find(key)
        assert gone == (0 if i is None else 1)
        if i is not None:
            self.model.entries.pop(i)

    @precondition(lambda self: hasattr(self, "cache"))
    @rule()
    def flush(self) -> None:
        self.cache.flush()
        self.model.entries.clear()

    @invariant()
    def same_entries_in_the_same_order(self) -> None:
        if hasattr(self, "cache"):
            assert self.cache.keys() == [k for k, _, _ in self.model.entries]
            assert len(self.cache) == len(self.model.entries) <= self.model.maxsize
            assert (self.cache.stats.hits, self.cache.stats.misses, self.cache.stats.puts) == \
                (self.hits, self.misses, self.puts)


MemoryCacheMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_memory_cache_matches_the_reference = MemoryCacheMachine.TestCase
