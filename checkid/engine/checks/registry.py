"""The sender registry: a TXT record at ``<ID>.<zone>`` naming methods, addresses and ratings.

Grammar (whitespace-separated ``key=value`` blocks; keys case-insensitive; unknown keys
ignored; the strings of a TXT record are concatenated, several TXT records are joined and
a historic trailing ``&`` continuation mark is dropped):

- ``svc=`` / ``ratings=``: ``SERVICE:GRADE,...``; a grade is a letter or an integer of up to
  three digits (``S1:A,M2:A,H1:B``, ``Q3:87``)
- ``mth=`` / ``methods=``: ``METHOD[+N],...``; N is the most DNS queries the method needs
  (``SPF`` and ``SPF1`` are the same method)
- ``ip4=`` / ``ip6=``: addresses, CIDR blocks, or last-octet ranges (``192.0.2.216-8`` is
  .216 to .218), the addresses allowed to use the ID
- ``opt=``: ``df:N`` (a default record of ID status N, 1..8; without it the status is 9),
  ``stop:all`` (no server may use this ID), ``idlevel:N``
"""
from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

import cachetools

from checkid.engine.dns.client import DnsAnswer, Outcome
from checkid.engine.checks.iplists import IPList
from checkid.errors import CheckidError

#: RFC 5321 limits a domain to 255 octets; the TXT data of a record set is bounded too
MAX_RECORD = 4096

_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
_GRADE = re.compile(r"(?:[A-Za-z]|[0-9]{1,3})\Z")
_METHOD = re.compile(r"([A-Za-z][A-Za-z0-9]*)(?:\+([0-9]{1,3}))?\Z")
_ALIASES = {"SPF": "SPF1"}


class RegistryError(CheckidError, ValueError):
    """The registry record does not parse."""


@dataclass(frozen=True, slots=True)
class Rating:
    service: str
    grade: str

    def __str__(self) -> str:
        return f"{self.service}:{self.grade}"


@dataclass(frozen=True, slots=True)
class MethodOffer:
    #: canonical method name, upper case (``SPF1``, ``DKIM``, ``CSV``)
    name: str
    #: the most DNS queries the method needs, None when the record does not say
    cost: int | None


@dataclass(frozen=True, slots=True)
class Record:
    methods: tuple[MethodOffer, ...] = ()
    ratings: tuple[Rating, ...] = ()
    #: the addresses allowed to use the ID in HELO (``ip4=``/``ip6=``); None when not given
    addresses: IPList | None = None
    #: ID status: 1..8 for a default record (``df:N``), 9 for an authoritative record
    status: int = 9
    #: ``opt=stop:all``: no server may use this ID
    stop: bool = False
    text: str = ""

    @property
    def ratings_text(self) -> str:
        return ",".join(map(str, self.ratings))


class RegistryOutcome(enum.Enum):
    RECORD = "record"
    NO_RECORD = "no_record"
    PARSE_ERROR = "parse_error"
    #: the lookup timed out or the servers failed
    TEMPERROR = "temperror"


@dataclass(frozen=True, slots=True)
class RegistryResult:
    outcome: RegistryOutcome
    record: Record | None = None
    error: str = ""


def parse(text: str) -> Record:
    """Parse a registry record. :raises RegistryError: saying what is wrong."""
    if len(text) > MAX_RECORD:
        raise RegistryError(f"record longer than {MAX_RECORD} characters")
    methods: list[MethodOffer] = []
    ratings: list[Rating] = []
    addresses: IPList | None = None
    status, stop, known = 9, False, False
    for block in text.split():
        key, sep, value = block.partition("=")
        if not sep or not key:
            raise RegistryError(f"block {block!r} is not key=value")
        key = key.lower()
        if key in ("svc", "ratings"):
            ratings.extend(_ratings(value))
        elif key in ("mth", "methods"):
            methods.extend(_methods(value))
        elif key in ("ip4", "ip6"):
            addresses = addresses or IPList("registry")
            for net in _addresses(value, key):
                addresses.add(net)
        elif key == "opt":
            for item in _items(value, key):
                name, _, arg = item.partition(":")
                name = name.lower()
                if name == "df":
                    if not arg.isdigit() or not 1 <= int(arg) <= 8:
                        raise RegistryError(f"opt=df:{arg}: status must be 1..8")
                    status = int(arg)
                elif name == "stop":
                    stop = True
        else:
            continue
        known = True
    if not known:
        raise RegistryError("no registry keys (svc=, mth=, ip4=, ip6=, opt=)")
    return Record(tuple(methods), tuple(ratings), addresses, status, stop, text)


def _items(value: str, key: str) -> list[str]:
    items = value.split(",")
    if not value or any(not i for i in items):
        raise RegistryError(f"{key}=: empty item in {value!r}")
    return items


def _ratings(value: str) -> list[Rating]:
    out = []
    for item in _items(value, "svc"):
        service, sep, grade = item.rpartition(":")
        if not sep or not _SERVICE.match(service) or not _GRADE.match(grade):
            raise RegistryError(f"svc=: bad rating {item!r} (want SERVICE:GRADE)")
        out.append(Rating(service.upper(), grade.upper()))
    return out


def _methods(value: str) -> list[MethodOffer]:
    out = []
    for item in _items(value, "mth"):
        m = _METHOD.match(item)
        if m is None:
            raise RegistryError(f"mth=: bad method {item!r} (want METHOD[+N])")
        name = m.group(1).upper()
        out.append(MethodOffer(_ALIASES.get(name, name), int(m.group(2)) if m.group(2) else None))
    return out


def _addresses(value: str, key: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for item in _items(value, key):
        try:
            if key == "ip6":
                nets.append(ipaddress.IPv6Network(item, strict=False))
            elif "-" in item:  # 192.0.2.216-8: .216 to .218, the end's leading digits implied
                first, _, end = item.partition("-")
                lo = ipaddress.IPv4Address(first)
                head = first.rsplit(".", 1)[1]
                if not end.isdigit() or len(end) > len(head):
                    raise ValueError
                hi_octet = int(head[: len(head) - len(end)] + end)
                if not int(head) <= hi_octet <= 255:
                    raise ValueError
                hi = ipaddress.IPv4Address(int(lo) + hi_octet - int(head))
                nets.extend(ipaddress.summarize_address_range(lo, hi))
            else:
                nets.append(ipaddress.IPv4Network(item, strict=False))
        except ValueError:
            raise RegistryError(f"{key}=: bad address {item!r}") from None
    return nets


#: parsed records by their TXT data: a warm decision does not parse again
_parsed: cachetools.LRUCache[tuple[tuple[bytes, ...], ...], Record | RegistryError] = cachetools.LRUCache(10_000)


def interpret(answer: DnsAnswer) -> RegistryResult:
    """Turn the TXT answer at ``<ID>.<zone>`` into a registry outcome."""
    if answer.is_error:
        return RegistryResult(RegistryOutcome.TEMPERROR, error=answer.outcome.name)
    if answer.outcome is not Outcome.ANSWER:
        return RegistryResult(RegistryOutcome.NO_RECORD)
    parsed = _parsed.get(answer.records)
    if parsed is None:
        text = " ".join(b"".join(chunks).decode("ascii", "replace").rstrip("&").strip() for chunks in answer.records)
        try:
            parsed = parse(text)
        except RegistryError as e:
            parsed = e
        _parsed[answer.records] = parsed
    if isinstance(parsed, RegistryError):
        return RegistryResult(RegistryOutcome.PARSE_ERROR, error=str(parsed))
    return RegistryResult(RegistryOutcome.RECORD, parsed)
