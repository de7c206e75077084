"""A narrow wrapper over dnspython's async resolver, with the answer cache in front.

Lookups return a :class:`DnsAnswer` whose :class:`Outcome` keeps "empty" (NXDOMAIN, NODATA)
apart from "error" (TIMEOUT, SERVFAIL): SPF and the registry must tell them apart. A CNAME
loop is "empty" (NODATA): it is a permanent misconfiguration, not a failure to retry. Positive
and negative answers are cached (negative TTL from the SOA, RFC 2308 §5); errors never are.
Concurrent identical lookups share one query.

UDP queries go out on a few persistent connected sockets per nameserver
(:mod:`checkid.engine.dns.transport`), not a new socket per query; dnspython's resolver still
decides retries, failover and the TCP retry on truncation. Connected, the sockets take
datagrams only from the server they ask, and the kernel reports an ICMP port or host
unreachable on them, so a nameserver whose port is closed fails at once (dnspython drops it
from the query's list and asks the next, or the answer is SERVFAIL when none is left) instead
of costing the whole timeout like a silent one.
"""
from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from checkid.engine.dns.cache import Cache
from checkid.engine.dns.transport import PooledNameserver, UdpTransport
from checkid.config import DnsConfig, parse_hostport
from checkid.engine.trace import Trace
from checkid.errors import CheckidError


class Outcome(enum.Enum):
    """How a lookup ended."""

    #: records of the asked type (after following CNAMEs)
    ANSWER = "answer"
    #: the name does not exist
    NXDOMAIN = "nxdomain"
    #: the name exists but has no records of the asked type
    NODATA = "nodata"
    #: no server answered in time
    TIMEOUT = "timeout"
    #: the servers answered with an error (SERVFAIL, REFUSED, malformed)
    SERVFAIL = "servfail"


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    outcome: Outcome
    #: A/AAAA: address text; TXT: tuple of bytes chunks; MX: (preference, exchange); SRV:
    #: (priority, weight, port, target), target ``"."`` for the root; PTR: name
    records: tuple[Any, ...] = ()
    #: seconds the answer may be cached (0 for errors)
    ttl: int = 0
    #: equal answers are interchangeable: the memory cache stores one instance for them all
    SHAREABLE: ClassVar[bool] = True

    @property
    def is_error(self) -> bool:
        return self.outcome is Outcome.TIMEOUT or self.outcome is Outcome.SERVFAIL

    @property
    def negative(self) -> bool:
        """NXDOMAIN or NODATA: a cacheable "no"."""
        return self.outcome is Outcome.NXDOMAIN or self.outcome is Outcome.NODATA

    def describe(self) -> str:
        if self.outcome is Outcome.ANSWER:
            return f"{', '.join(_show(r) for r in self.records)} (ttl {self.ttl})"
        return f"{self.outcome.name} (ttl {self.ttl})" if not self.is_error else self.outcome.name


def _show(record: Any) -> str:
    if isinstance(record, tuple) and record and isinstance(record[0], bytes):
        return '"' + "".join(c.decode("ascii", "replace") for c in record) + '"'
    if isinstance(record, tuple):
        return " ".join(map(str, record))
    return str(record)


CacheKey = tuple[str, str]

#: the loop time by which the current decision must be done; set by the engine per decision.
#: Only DNS waits can take long, so the deadline is enforced here, on cache misses, and a
#: warm decision pays nothing for it.
DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar("checkid_deadline", default=0.0)


class DeadlineExceeded(CheckidError, TimeoutError):
    """The decision ran out of time waiting for DNS."""


class DnsClient:
    """One per process (created after a fork): resolve with cache and query sharing."""

    def __init__(self, config: DnsConfig, cache: Cache, clock: Callable[[], float] = time.monotonic,
                 counts: Counter[tuple[str, ...]] | None = None,
                 observe: Callable[[str, float], None] | None = None) -> None:
        self.config = config
        self.cache = cache
        self.clock = clock
        #: ("dns_queries", type, outcome) and ("cache_lookups", layer, result) counters
        self.counts: Counter[tuple[str, ...]] = counts if counts is not None else Counter()
        #: called with (type, seconds) for every query sent
        self.observe = observe
        self._resolver: dns.asyncresolver.Resolver | None = None
        self.transport = UdpTransport(self.counts)
        #: dnspython's asyncio backend, for the TCP retry and the back-off between rounds
        self._backend = dns.asyncbackend.get_backend("asyncio")
        self._inflight: dict[CacheKey, asyncio.Future[DnsAnswer]] = {}

    async def resolve(self, name: str, rdtype: str, trace: Trace | None = None,
                      alongside: tuple[tuple[str, str], ...] = ()) -> DnsAnswer:
        """Look up ``name``/``rdtype`` (``A``, ``AAAA``, ``TXT``, ``MX``, ``SRV``, ``PTR``).

        On a cache miss, the lookups in ``alongside`` (name, type) start too (see
        :meth:`prefetch`): answers the caller will likely need next arrive in the same round
        trip. A hit starts nothing, so a warm decision pays nothing for them.
        """
        key = (name.lower().rstrip("."), rdtype)
        answer: DnsAnswer | None = self.cache.get(key, self.clock())
        if answer is None:
            self.counts[("cache_lookups", "all", "miss")] += 1
            for other in alongside:
                self.prefetch(*other, trace=trace)
        else:
            self.counts[("cache_lookups", getattr(self.cache, "last_layer", "l1"),
                         "negative_hit" if answer.negative else "hit")] += 1
            if trace is not None:
                trace.add("dns", f"{key[0]} {rdtype}: {answer.describe()} {trace.source(key)}")
            return answer
        future = self._inflight.get(key)
        if future is None:
            future = self._start(key)
        elif trace is not None:
            trace.add("dns", f"{key[0]} {rdtype}: joining a query in flight")
        deadline = DEADLINE.get()
        if deadline:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise DeadlineExceeded()
            try:
                # wait_for, not asyncio.timeout_at: a front-end may drive this coroutine
                # outside any task (checkid.protocols.eager), where a timeout cannot cancel
                answer = await asyncio.wait_for(asyncio.shield(future), remaining)
            except TimeoutError:
                raise DeadlineExceeded() from None
        else:
            answer = await asyncio.shield(future)
        if trace is not None:
            trace.add("dns", f"{key[0]} {rdtype}: {answer.describe()} [query]")
        return answer

    def prefetch(self, name: str, rdtype: str, trace: Trace | None = None) -> bool:
        """Start looking ``name`` up unless it is cached or asked already; do not wait for it.

        The answer lands in the cache, and a :meth:`resolve` meanwhile joins the query in
        flight. For lookups that do not depend on each other, so they share one round trip.
        True when a query started: it goes out at the caller's next suspension.
        """
        key = (name.lower().rstrip("."), rdtype)
        if key in self._inflight or self.cache.get(key, self.clock()) is not None:
            return False
        self.counts[("dns_prefetches", rdtype)] += 1
        if trace is not None:
            trace.prefetched.add(key)
        self._start(key)
        return True

    def _start(self, key: CacheKey) -> asyncio.Future[DnsAnswer]:
        future = asyncio.ensure_future(self._lookup(key))
        self._inflight[key] = future
        future.add_done_callback(functools.partial(self._landed, key))
        return future

    def _landed(self, key: CacheKey, _future: object) -> None:
        self._inflight.pop(key, None)

    async def _lookup(self, key: CacheKey) -> DnsAnswer:
        name, rdtype = key
        start = time.perf_counter()
        answer = await self._query(name, rdtype)
        self.counts[("dns_queries", rdtype, answer.outcome.value)] += 1
        if self.observe is not None:
            self.observe(rdtype, time.perf_counter() - start)
        if answer.ttl > 0:
            self.cache.put(key, answer, self.clock() + answer.ttl)
        return answer

    async def _query(self, name: str, rdtype: str) -> DnsAnswer:
        cfg = self.config
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:  # too long or an empty label: it cannot exist
            return DnsAnswer(Outcome.NXDOMAIN)
        try:
            result = await self.resolver.resolve(
                qname, rdtype, raise_on_no_answer=False, lifetime=cfg.timeout, search=False,
                backend=self._backend,
            )
        except dns.resolver.NXDOMAIN as e:
            return DnsAnswer(Outcome.NXDOMAIN, (), self._negative_ttl(e.response(qname)))
        except dns.resolver.LifetimeTimeout:
            return DnsAnswer(Outcome.TIMEOUT)
        except dns.resolver.NoNameservers as e:
            return self._cname_loop(e) or DnsAnswer(Outcome.SERVFAIL)
        except dns.exception.DNSException:
            # NoNameservers (SERVFAIL/REFUSED everywhere), YXDOMAIN, malformed answers
            return DnsAnswer(Outcome.SERVFAIL)
        if result.rrset is None:
            return DnsAnswer(Outcome.NODATA, (), self._negative_ttl(result.response))
        ttl = result.chaining_result.minimum_ttl  # resolved once, by the Answer
        records = tuple(_value(rdtype, rd) for rd in result.rrset)
        return DnsAnswer(Outcome.ANSWER, records, max(cfg.min_ttl, min(ttl, cfg.max_ttl)))

    def _cname_loop(self, error: dns.resolver.NoNameservers) -> DnsAnswer | None:
        """NODATA when a server answered with a CNAME chain that never ends (a loop, or
        longer than dnspython follows), else None. Such data is broken for good: asking
        again gets the same answer, so it is "no records", never a temporary error (RFC
        7208 test suite, ``ptr-cname-loop``). Cached for the chain's TTL, as a negative."""
        for _server, _tcp, _port, exc, response in error.kwargs.get("errors") or ():
            if isinstance(exc, dns.message.ChainTooLong):
                ttl = min((rrset.ttl for rrset in response.answer), default=0) if response is not None else 0
                return DnsAnswer(Outcome.NODATA, (), min(ttl, self.config.max_negative_ttl))
        return None

    def _negative_ttl(self, response: dns.message.Message | None) -> int:
        """RFC 2308 §5: the lesser of the SOA's TTL and its MINIMUM field; 0 without a SOA."""
        if response is not None:
            for rrset in response.authority:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return min(rrset.ttl, rrset[0].minimum, self.config.max_negative_ttl)
        return 0

    def close(self) -> None:
        """Close the client's UDP sockets (collecting the client closes them too)."""
        self.transport.close()

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = make_resolver(self.config, self.transport)
        return self._resolver


def make_resolver(config: DnsConfig, transport: UdpTransport) -> dns.asyncresolver.Resolver:
    """A resolver on the configured nameservers, or the system's when none are set, whose
    UDP queries go through ``transport``."""
    if config.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        addresses = [parse_hostport(entry, 53) for entry in config.nameservers]
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
            addresses = [(ns.address, ns.port) if isinstance(ns, dns.nameserver.Do53Nameserver)
                         else (str(ns), resolver.port) for ns in resolver.nameservers]
        except dns.resolver.NoResolverConfiguration:
            resolver = dns.asyncresolver.Resolver(configure=False)
            addresses = [("127.0.0.1", 53)]
    servers: list[dns.nameserver.Nameserver | str] = [PooledNameserver(host, port, transport)
                                                      for host, port in addresses]
    resolver.nameservers = servers
    # half the budget per try: a lost UDP datagram or a dead server still leaves a second try
    resolver.timeout = config.timeout / 2
    resolver.lifetime = config.timeout
    resolver.cache = None
    return resolver


def _value(rdtype: str, rd: Any) -> Any:
    if rdtype in ("A", "AAAA"):
        return rd.address
    if rdtype in ("TXT", "SPF"):
        return tuple(rd.strings)
    if rdtype == "MX":
        return (rd.preference, rd.exchange.to_text(omit_final_dot=True))
    if rdtype == "SRV":  # a plain tuple, like MX, so that the shared cache's codec holds it
        return (rd.priority, rd.weight, rd.port, rd.target.to_text(omit_final_dot=True))
    if rdtype in ("PTR", "CNAME"):
        return rd.target.to_text(omit_final_dot=True)
    return rd.to_text()
