"""SPF (RFC 7208) through pyspf, on top of the engine's cached DNS, without blocking the loop.

pyspf is synchronous. Each check runs a :class:`_Query`, a ``spf.query`` whose ``dns``
method asks that check's session instead of the process-wide ``spf.DNSLookup`` (which
stays untouched, for any other user of pyspf in the process). The session answers only
from what is already known (the cache, or answers fetched for this check); on a miss it
raises :class:`_Miss`, the coroutine awaits that lookup, and the check runs again with the
new answer in hand. A warm check therefore runs once with no await, and the event loop
never waits on DNS inside pyspf.

pyspf swallows exceptions in a few places (the ``exp=`` fetch uses a bare ``except:``), so
a miss is also remembered on the session and a run that saw one is never trusted.

When a record is read, the domains of its ``include:`` and ``redirect=`` terms are asked at
once (:meth:`DnsClient.prefetch`), so independent lookups share a round trip instead of
waiting for pyspf to reach each in turn. Those queries go out before pyspf runs again (the
check yields to the loop once), so the rerun's CPU overlaps their round trip instead of
delaying it: on a cold chain, each link costs one round trip plus the answer's parsing.

Finished results are cached until the earliest expiry of the DNS answers the check used
(never when one of them could not be cached, and never a temporary error). The key is
``(ip, sender domain)`` when no record the check read uses macros, so per-message senders
(VERP) share one entry; otherwise ``(ip, sender, helo)``.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import spf

from checkid.engine.dns.cache import Cache
from checkid.engine.dns.client import DnsAnswer, DnsClient, Outcome
from checkid.engine.result import SPELLING, Result
from checkid.engine.trace import Trace

#: Each rerun resolves one more name; pyspf's own limits (10 lookups, 10 MX, 10 PTR, void
#: limit) bound a legal record far below this, so reaching it means something is wrong.
MAX_RUNS = 120


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    result: Result
    explanation: str
    #: the ``Received-SPF`` header value pyspf builds, when asked for
    received_spf: str = ""
    #: equal outcomes are interchangeable: the memory cache stores one instance for them all
    SHAREABLE: ClassVar[bool] = True


class _Miss(Exception):
    """The answer is not known yet: resolve it and run again."""


class _Session:
    __slots__ = ("client", "now", "answers", "missed", "expires", "error", "macros", "trace")

    def __init__(self, client: DnsClient, now: float, trace: Trace | None) -> None:
        self.client = client
        self.now = now
        self.answers: dict[tuple[str, str], DnsAnswer] = {}
        self.missed: tuple[str, str] | None = None
        self.expires = float("inf")
        self.error = False
        #: a TXT record read by the check uses macros: the result depends on more than the domain
        self.macros = False
        self.trace = trace

    def lookup(self, name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
        key = (name.lower().rstrip("."), qtype)
        answer = self.answers.get(key)
        if answer is None:
            entry = self.client.cache.get_entry(key, self.now)
            if entry is None:
                self.missed = key
                raise _Miss(key)
            answer = entry[0]
            self.expires = min(self.expires, entry[1])
            if self.trace is not None:
                self.trace.add("dns", f"{key[0]} {qtype}: {answer.describe()} {self.trace.source(key)}")
            self.learn(key, answer)
        if answer.is_error:
            self.error = True
            raise spf.TempError(f"DNS {answer.outcome.name} for {key[0]} {qtype}")
        if answer.outcome is not Outcome.ANSWER:
            return []
        out: list[tuple[tuple[str, str], Any]] = [((name, qtype), r) for r in answer.records]
        if qtype == "MX":  # the exchanges' addresses, when known, spare pyspf a lookup each
            for _, exchange in answer.records:
                known = self.client.cache.get_entry((exchange.lower(), "A"), self.now)
                if known is not None and known[0].outcome is Outcome.ANSWER:
                    self.expires = min(self.expires, known[1])
                    out.extend(((exchange, "A"), a) for a in known[0].records)
        return out

    def learn(self, key: tuple[str, str], answer: DnsAnswer) -> bool:
        """Keep an answer for the reruns of this check; a TXT record is read once: does it
        use macros, and which lookups come next (asked now, all at once). True when that
        started a query."""
        self.answers[key] = answer
        started = False
        if key[1] in ("TXT", "SPF") and answer.outcome is Outcome.ANSWER:
            if any(b"%" in chunk for rec in answer.records for chunk in rec):
                self.macros = True
            for target in chain_targets(answer.records):
                started = self.client.prefetch(target, "TXT", self.trace) or started
        return started


def chain_targets(records: tuple[Any, ...]) -> list[str]:
    """The ``include:`` and ``redirect=`` domains of the SPF records among TXT ``records``
    (those without macros): the next round of lookups, independent of each other."""
    targets = []
    for record in records:
        text = b"".join(record)
        if text[:7].lower() != b"v=spf1 " or b"%" in text:
            continue
        for term in text.decode("ascii", "replace").lower().split()[1:]:
            term = term.lstrip("+-~?")
            for prefix in ("include:", "redirect="):
                if term.startswith(prefix) and len(term) > len(prefix):
                    targets.append(term[len(prefix):])
    return targets


class _Query(spf.query):
    """A pyspf query whose DNS is one check's session.

    pyspf's own ``query.dns`` asks the module-wide ``spf.DNSLookup``; this one keeps its
    bookkeeping (the per-query answer cache, the void-lookup limit of RFC 7208 §4.6.4) and
    asks the session instead. The session's answers already follow CNAMEs (the resolver
    does), so pyspf's CNAME walking has nothing to do here.
    """

    def __init__(self, session: _Session, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session

    def dns(self, name: str, qtype: str, cnames: object = None, ignore_void: bool = False) -> list[Any]:
        if not name:
            raise spf.PermError("empty domain name")
        name = str(name)
        if name.endswith("."):
            name = name[:-1]
        if not all(0 < len(label) < 64 for label in name.split(".")):
            return []  # not a valid DNS name: no answer, and not a void lookup (as pyspf)
        name = name.lower()
        result: list[Any] = self.cache.get((name, qtype), [])
        if result:
            return result
        for (owner, rtype), value in self.session.lookup(name, qtype):
            if (qtype, rtype) in spf.query.SAFE2CACHE:
                self.cache.setdefault((owner.lower(), rtype), []).append(value)
        result = self.cache.get((name, qtype), [])
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result


class SpfChecker:
    """Runs SPF checks for one engine, caching finished results."""

    def __init__(self, client: DnsClient, cache: Cache, clock: Callable[[], float],
                 receiver: str = "unknown", max_ttl: int = 86_400) -> None:
        self.client = client
        self.counts = client.counts
        self.cache = cache
        self.clock = clock
        self.receiver = receiver
        self.max_ttl = max_ttl

    async def check(self, ip: str, sender: str, helo: str, trace: Trace | None = None,
                    want_header: bool = False) -> SpfOutcome:
        """Evaluate SPF for ``sender`` (``postmaster@helo`` when empty) from ``ip``."""
        domain = (sender or "@" + helo).rpartition("@")[2].lower()
        generic, specific = ("spf", ip, domain), ("spf", ip, sender, helo)
        now = self.clock()
        cached: SpfOutcome | None = self.cache.get(generic, now) or self.cache.get(specific, now)
        if cached is not None and (cached.received_spf or not want_header):
            self.counts[("spf_results", SPELLING[cached.result])] += 1
            if trace is not None:
                trace.add("spf", f"{sender or helo} from {ip}: {cached.result.name} [cache]")
            return cached
        session = _Session(self.client, now, trace)
        for _ in range(MAX_RUNS):
            q = _Query(session, i=ip, s=sender, h=helo, receiver=self.receiver, strict=True)
            session.missed = None
            try:
                result, _code, explanation = q.check()
            except _Miss:
                pass
            if session.missed is None:
                break
            key_missed = session.missed
            answer = await self.client.resolve(key_missed[0], key_missed[1], trace)
            if session.learn(key_missed, answer):
                await asyncio.sleep(0)  # the next links' queries go out now, before the rerun
            # an answer that could not be cached (TTL 0) makes the result uncacheable too
            session.expires = min(session.expires, self.clock() + answer.ttl)
        else:
            result, explanation = "temperror", "SPF evaluation did not converge"
            session.error = True
        header = q.get_header(result, self.receiver) if want_header else ""
        outcome = SpfOutcome(Result(result.upper()), explanation, header)
        self.counts[("spf_results", SPELLING[outcome.result])] += 1
        if trace is not None:
            trace.add("spf", f"{sender or helo} from {ip}: {outcome.result.name} ({explanation})")
        if not session.error and outcome.result is not Result.TEMPERROR:
            expires = min(session.expires, now + self.max_ttl)
            if expires > self.clock():
                self.cache.put(specific if session.macros else generic, outcome, expires)
        return outcome
