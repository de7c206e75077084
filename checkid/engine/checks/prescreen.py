"""IP lists before anything costs a registry query: allow list, local block lists, DNSBLs.

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

from checkid.config import DnsList
from checkid.engine.dns.client import DnsClient, Outcome
from checkid.engine.checks.iplists import IPAddress, IPList
from checkid.engine.trace import Trace

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


CLEAR = ListResult(Verdict.CLEAR)


@functools.lru_cache(maxsize=65536)
def reverse_name(ip: IPAddress) -> str:
    """The DNSBL key: reversed octets for IPv4, reversed nibbles for IPv6 (RFC 5782)."""
    if ip.version == 4:
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


class IPScreen:
    """One set of lists: local block lists first, then DNSBLs asked in parallel."""

    def __init__(self, stage: str, blocks: tuple[IPList, ...], dnsbls: tuple[DnsList, ...],
                 counts: Counter[tuple[str, ...]], allow: IPList | None = None) -> None:
        self.stage = stage
        self.allow = allow
        self.blocks = blocks
        self.dnsbls = dnsbls
        self.counts = counts

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
