"""IP lists before anything costs a registry query: allow list, local block lists, the fleet's
learned blocks (``[fleet]``, :mod:`checkid.engine.fleet`: a dict probe, no DNS), DNSBLs;
and the skip lists (:class:`SkipList`): HELO names, sender domains, recipients and logged-in
clients whose mail is accepted before any check.

DNSBL answers in 127.255.255.0/24 are the lists' error codes (typo'd zone, open resolver,
over quota: reference/anchors.md §6) and never mean "listed"; they are counted. Without a
code map any 127.0.0.0/24 answer lists; with one, only the mapped codes do.
"""
from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
from collections import Counter
from dataclasses import dataclass

from checkid.config import DnsList, PrescreenConfig
from checkid.engine.decision import Envelope
from checkid.engine.dns.client import DnsClient, Outcome
from checkid.engine.fleet import FLEET_LIST, Fleet
from checkid.engine.checks.iplists import IPAddress, IPList
from checkid.engine.trace import Trace
from checkid.engine.validate import address_domain

_ERRORS = ipaddress.IPv4Network("127.255.255.0/24")
_LISTED = ipaddress.IPv4Network("127.0.0.0/24")


class Verdict(enum.Enum):
    #: on the allow list
    ALLOW = "allow"
    #: on a block list or DNSBL
    BLOCK = "block"
    #: on no list
    CLEAR = "clear"


@dataclass(frozen=True, slots=True)
class ListResult:
    verdict: Verdict
    #: the list that matched, e.g. ``zen.spamhaus.org`` or a file name
    list_name: str = ""
    #: the sub-list or reason, e.g. ``SBL``
    reason: str = ""
    #: a block the fleet learned (``list_name`` is ``fleet block``): not counted as a new
    #: rejection, so it lapses after ``[fleet] block_seconds`` even while the sender insists
    fleet: bool = False


CLEAR = ListResult(Verdict.CLEAR)


@functools.lru_cache(maxsize=8192)
def reverse_name(ip: IPAddress) -> str:
    """The DNSBL key: reversed octets for IPv4, reversed nibbles for IPv6 (RFC 5782)."""
    if ip.version == 4:
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


class IPScreen:
    """One set of lists: local block lists first, then the fleet's learned blocks, then DNSBLs
    asked in parallel."""

    def __init__(self, stage: str, blocks: tuple[IPList, ...], dnsbls: tuple[DnsList, ...],
                 counts: Counter[tuple[str, ...]], allow: IPList | None = None, fleet: Fleet | None = None) -> None:
        self.stage = stage
        self.allow = allow
        self.blocks = blocks
        self.dnsbls = dnsbls
        self.counts = counts
        self.fleet = fleet

    async def check(self, ip: IPAddress, client: DnsClient, trace: Trace | None = None) -> ListResult:
        result = await self._check(ip, client, trace)
        if result.verdict is not Verdict.CLEAR:
            self.counts[("list_hits", self.stage, result.list_name)] += 1
        return result

    async def _check(self, ip: IPAddress, client: DnsClient, trace: Trace | None) -> ListResult:
        if self.allow is not None and self.allow.lookup(ip) is not None:
            return ListResult(Verdict.ALLOW, self.allow.name)
        for block in self.blocks:
            hit = block.lookup(ip)
            if hit is not None:
                return ListResult(Verdict.BLOCK, block.name, hit.txt.replace("$", str(ip)))
        if self.fleet is not None:
            learned = self.fleet.blocked(ip)
            if learned is not None:
                subject, count = learned
                return ListResult(Verdict.BLOCK, FLEET_LIST, f"{subject.partition(':')[2]}: {count} rejections",
                                  fleet=True)
        if not self.dnsbls:
            return CLEAR
        key = reverse_name(ip)
        if len(self.dnsbls) == 1:
            return await self._dnsbl(self.dnsbls[0], key, client, trace)
        results = await asyncio.gather(*(self._dnsbl(d, key, client, trace) for d in self.dnsbls))
        return next((r for r in results if r.verdict is Verdict.BLOCK), CLEAR)

    async def _dnsbl(self, dnsl: DnsList, key: str, client: DnsClient, trace: Trace | None) -> ListResult:
        answer = await client.resolve(f"{key}.{dnsl.zone}", "A", trace)
        if answer.outcome is not Outcome.ANSWER:
            if answer.is_error:
                self.counts[("dnsbl_lookup_errors", dnsl.zone)] += 1
            return CLEAR
        for address in answer.records:
            addr = ipaddress.IPv4Address(address)
            if addr in _ERRORS:
                self.counts[("dnsbl_error_answers", dnsl.zone)] += 1
                if trace is not None:
                    trace.add("prescreen", f"{dnsl.zone} answered error code {address}: not a listing")
                continue
            if dnsl.codes:
                reason = dnsl.codes.get(address)
                if reason is not None:
                    return ListResult(Verdict.BLOCK, dnsl.name or dnsl.zone, reason)
                self.counts[("dnsbl_unknown_answers", dnsl.zone)] += 1
            elif addr in _LISTED:
                return ListResult(Verdict.BLOCK, dnsl.name or dnsl.zone, address)
        return CLEAR


class _Names:
    """Domains, each matching itself, and ``.example.com`` entries matching the names below."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        names = [e.lower().rstrip(".") for e in entries]
        self.exact = frozenset(n for n in names if not n.startswith("."))
        self.suffixes = tuple(n for n in names if n.startswith("."))

    def __bool__(self) -> bool:
        return bool(self.exact or self.suffixes)

    def match(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))


class SkipList:
    """``[prescreen]`` skip lists: who is accepted unchecked, before any DNS query."""

    def __init__(self, config: PrescreenConfig) -> None:
        self.authenticated = config.skip_authenticated
        self.helo = _Names(config.skip_helo)
        self.senders = _Names(config.skip_sender_domains)
        self.addresses = frozenset(e.lower() for e in config.skip_recipients if "@" in e)
        self.rcpt_domains = _Names(tuple(e for e in config.skip_recipients if "@" not in e))

    def reason(self, env: Envelope) -> str:
        """Why ``env`` is skipped (``skip_authenticated``, ``skip_helo``, ``skip_sender``,
        ``skip_recipients``), or "" when it is not. Recipients skip a transaction only when
        every one of them is listed: one listed recipient must not carry mail to the others."""
        if self.authenticated and env.authenticated:
            return "skip_authenticated"
        if self.helo and env.helo and self.helo.match(env.helo):
            return "skip_helo"
        if self.senders and env.sender:
            domain = address_domain(env.sender)
            if domain is not None and self.senders.match(domain):
                return "skip_sender"
        if env.rcpts and (self.addresses or self.rcpt_domains) and all(map(self.recipient, env.rcpts)):
            return "skip_recipients"
        return ""

    def recipient(self, rcpt: str) -> bool:
        """Whether ``rcpt`` is on ``skip_recipients`` (its address, or its domain)."""
        address = rcpt.strip().strip("<>").lower()
        if address in self.addresses:
            return True
        domain = address.rpartition("@")[2]
        return bool(domain) and bool(self.rcpt_domains) and self.rcpt_domains.match(domain)
