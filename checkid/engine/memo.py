"""The decision memo: a warm decision remembered for the same inputs, while what it used is valid.

A policy's decision is a function of the inputs it reads (the envelope's fields, through
the context's stages) and of the cached answers those stages used. A policy that declares
which inputs it reads (``DECISION_INPUTS`` in the policy file, names from :data:`INPUTS`)
opts in: a decision made entirely from cached answers is kept, keyed by those inputs, until
the earliest expiry among the answers it used, and the same inputs get it back without
running the policy. What the decision counted while it was made is counted again on every
hit, so the counters read as if it had run; the decision log line is the front-end's and
is written per request either way.

A decision is not kept when any cache lookup missed (it waited for DNS, or depends on
what came back), when it was traced, or when it is an end-of-data decision (the message
is an input). :meth:`DecisionMemo.clear` drops everything: the engine calls it on a
policy or thresholds change and on a cache flush.
"""
from __future__ import annotations

import contextvars
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from checkid.engine.context import Context
from checkid.engine.decision import Decision
from checkid.engine.dns.cache import Cache, CacheStats

#: the inputs a policy may declare it reads (``DECISION_INPUTS``), and what of the envelope
#: each puts in the memo key. The identity and its candidates, and whether the message
#: follows, are always in the key (the engine derives them before the policy runs).
INPUTS: dict[str, str] = {
    "ip": "the client address (as parsed: ctx.ip, ctx.ip_text)",
    "id": "the declared ID, as sent",
    "helo": "the HELO name, as sent",
    "sender": "the MAIL FROM address, as sent",
    "recipients": "the recipient addresses, as sent",
    "recipient_class": "each recipient's [reputation] recipient_thresholds entry only "
                       "(what ctx.thresholds reads), not the address",
    "authenticated": "the SASL login name",
}

#: how many decisions a process remembers; past it, the oldest are forgotten first. An entry
#: (key, decision, what it counted) is about 1 KiB on the border trace (bench/workermem.py
#: --trace), so this is about 8 MiB of a worker's budget
MEMO_SIZE = 8192


class Recording:
    """What one decision used while it was made: the earliest expiry, whether every lookup
    hit, and what it counted."""

    __slots__ = ("expires", "complete", "counted")

    def __init__(self) -> None:
        self.expires = float("inf")
        self.complete = True
        self.counted: list[tuple[tuple[str, ...], int]] = []


#: the decision being recorded in this task, None outside one (a context variable, so a
#: decision that waits on DNS never mixes with the warm ones that run meanwhile)
RECORDING: contextvars.ContextVar[Recording | None] = contextvars.ContextVar("checkid_memo_recording",
                                                                              default=None)


class RecordingCounter(Counter[tuple[str, ...]]):
    """The engine's counters: a plain :class:`~collections.Counter` that also tells the
    decision being recorded what it counted, so a memo hit can count the same."""

    def __setitem__(self, key: tuple[str, ...], value: int) -> None:
        recording = RECORDING.get()
        if recording is not None:
            recording.counted.append((key, value - dict.get(self, key, 0)))
        dict.__setitem__(self, key, value)

    def add(self, counted: Iterable[tuple[tuple[str, ...], int]]) -> None:
        """Count ``counted`` again (a memo hit): ``self[key] += n`` for each, in C when no
        decision is being recorded."""
        if RECORDING.get() is not None:
            for key, n in counted:
                self[key] += n
            return
        get, put = dict.get, dict.__setitem__
        for key, n in counted:
            put(self, key, get(self, key, 0) + n)


class RecordingCache:
    """The engine's cache as its stages see it: every lookup tells the decision being
    recorded the expiry of what it found, or that it found nothing."""

    def __init__(self, inner: Cache) -> None:
        self.inner = inner
        self.stats: CacheStats = inner.stats

    @property
    def last_layer(self) -> str:
        """The layer that answered the last lookup (a layered cache's), else ``l1``."""
        return getattr(self.inner, "last_layer", "l1")

    def get(self, key: Hashable, now: float) -> Any | None:
        entry = self.get_entry(key, now)
        return None if entry is None else entry[0]

    def get_entry(self, key: Hashable, now: float) -> tuple[Any, float] | None:
        entry = self.inner.get_entry(key, now)
        recording = RECORDING.get()
        if recording is not None:
            if entry is None:
                recording.complete = False
            elif entry[1] < recording.expires:
                recording.expires = entry[1]
        return entry

    def put(self, key: Hashable, value: Any, expires: float) -> None:
        self.inner.put(key, value, expires)

    def flush(self) -> None:
        self.inner.flush()


def check_inputs(declared: object) -> frozenset[str] | str:
    """A policy's ``DECISION_INPUTS`` as a set, or what is wrong with it."""
    if isinstance(declared, str) or not isinstance(declared, Iterable):
        return "DECISION_INPUTS must be a list of input names"
    names = list(declared)
    unknown = [n for n in names if n not in INPUTS]
    if unknown:
        return f"DECISION_INPUTS: unknown input {unknown[0]!r} (known: {', '.join(INPUTS)})"
    return frozenset(names)


class DecisionMemo:
    """Decisions by the inputs a policy reads, each until the earliest expiry of what it used.

    :param inputs: the names the policy declared (from :data:`INPUTS`)
    :param recipient_class: the thresholds key of a recipient (for ``recipient_class``)
    """

    def __init__(self, inputs: frozenset[str], recipient_class: Callable[[str], str],
                 size: int = MEMO_SIZE) -> None:
        self.inputs = inputs
        self._ip = "ip" in inputs
        self._id = "id" in inputs
        self._helo = "helo" in inputs
        self._sender = "sender" in inputs
        self._rcpts = "recipients" in inputs
        self._rclass = "recipient_class" in inputs
        self._authenticated = "authenticated" in inputs
        self._recipient_class = recipient_class
        self.size = max(1, size)
        #: key -> (decision, expiry, what it counted), oldest first: the oldest goes first when
        #: full (a hit moves nothing: cheaper per hit than an LRU's bookkeeping). An OrderedDict,
        #: not a dict: a dict's first key is found by walking past every slot deleted at its front
        #: since it was last resized, so evicting from a full dict costs ever more
        #:
        #: A hit asks the memory cache nothing, so the answers a memoized decision used age in
        #: its LRU and may be evicted while the decision is kept; refreshing them on every hit
        #: would cost the hottest path a lookup per answer, and the loss is bounded: when the
        #: decision expires (its earliest answer expired, so it is asked again anyway) the
        #: others come back from the shared layer, or DNS without one.
        self._entries: OrderedDict[Hashable, tuple[Decision, float, tuple[tuple[tuple[str, ...], int], ...]]] = \
            OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, ctx: Context) -> Hashable:
        """The memo key of a context about to be handed to the policy."""
        env = ctx.envelope
        return (
            ctx.identity, ctx.identity_source, ctx.candidates, env.message_follows,
            ctx.ip_text if self._ip else None,
            env.id if self._id else None,
            env.helo if self._helo else None,
            env.sender if self._sender else None,
            env.rcpts if self._rcpts else None,
            tuple(map(self._recipient_class, env.rcpts)) if self._rclass else None,
            env.authenticated if self._authenticated else None,
        )

    def get(self, key: Hashable, now: float, counts: RecordingCounter) -> Decision | None:
        """The decision kept under ``key`` while valid at ``now``, its counts counted again."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        decision, expires, counted = entry
        if expires <= now:
            del self._entries[key]
            return None
        counts.add(counted)
        return decision

    def put(self, key: Hashable, decision: Decision, recording: Recording, now: float) -> None:
        """Keep ``decision`` when it was made from cached answers only, all still valid."""
        if not recording.complete or recording.expires <= now:
            return
        entries = self._entries
        if key not in entries and len(entries) >= self.size:
            entries.popitem(last=False)
        entries[key] = (decision, recording.expires, tuple(recording.counted))

    def clear(self) -> None:
        """Forget every decision (a policy or thresholds change, a cache flush)."""
        self._entries.clear()
