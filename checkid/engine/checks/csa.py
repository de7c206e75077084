"""Client SMTP Authorization (CSA, draft-ietf-marid-csv-csa-02): the registry's ``CSV`` method.

CSA says whether the host named in HELO may act as an SMTP client, in an SRV record at
``_client._smtp.<HELO name>``. The draft's own text (-02, February 2005, expired) was not
to hand when this was written, so no section numbers are quoted: the rules below are the
draft's as Exim implements them (4.52 NewStuff TF/01; ``acl_verify_csa`` in ``acl.c`` and
the ``T_CSA`` lookup in ``dns.c``, by Tony Finch) and as his "Quick Guide to CSA" states them.

- **The record.** SRV ``Priority`` is the CSA version and must be 1; records of other
  versions are not records this code knows, and are ignored. ``Weight`` is the
  authorization: 1 not authorized, 2 authorized, 3 authorized but the address cannot be
  checked. ``Port`` holds assertion bits about subdomains: bit 0 (value 1) says every
  legitimate SMTP client under this name has a CSA record of its own. ``Target`` is the
  host whose A/AAAA records are the authorized addresses; ``.`` means there are none.
- **Authorized** (weight 2): the client's address must be one of the target's addresses
  (A for an IPv4 client, AAAA for IPv6) -> PASS, else FAIL. A target of ``.``, or one
  without addresses of the client's family, authorizes no address -> FAIL.
- **Not authorized** (weight 1) -> FAIL. **Unknown** (weight 3) -> NEUTRAL.
- **No record.** When the HELO name has none, its parent domains are asked for
  assertions about their subdomains, from the second-level domain down (the top-level
  domain never holds one; Exim's order, friendliest to caches), at most
  :data:`MAX_PARENTS` of them (Exim's ``dns_csa_search_limit``). A parent's version-1
  record with port bit 0 set means the HELO name should have had a record of its own
  -> FAIL ("explicit authorization required"). Otherwise the client's authorization is
  unknown -> NONE. checkid asks the parents together (one round trip), then reads them
  in that order.

checkid's own choices: a weight other than 1, 2 or 3 (Exim treats 0 as not authorized and
skips larger ones), and version-1 records of one name that disagree on the weight, are
malformed -> PERMERROR; a DNS timeout or server failure on a lookup that could change the
answer -> TEMPERROR. Exim's extension that maps an address-literal HELO into the reverse
DNS is not done: an address literal is no host name (the caller gives NONE for it).
"""
from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from checkid.engine.checks.iplists import IPAddress
from checkid.engine.dns.client import DnsAnswer, DnsClient, Outcome
from checkid.engine.result import Result
from checkid.engine.trace import Trace

#: the SRV service and protocol labels CSA uses
PREFIX = "_client._smtp"
#: the CSA version this code implements (the SRV Priority field)
VERSION = 1
#: parent domains asked at most when the HELO name has no record: Exim's default
#: ``dns_csa_search_limit``; it bounds the queries one HELO name can cost
MAX_PARENTS = 5
#: Port bit 0: every legitimate client under this domain has a CSA record of its own
EXPLICIT_AUTHORIZATION = 1

#: an SRV record as the DNS client gives it: (priority, weight, port, target)
SrvRecord = tuple[int, int, int, str]


class Authorization(enum.Enum):
    """What a name's own CSA records say."""

    #: no version-1 record
    NONE = "none"
    #: weight 1
    NOT_AUTHORIZED = "not_authorized"
    #: weight 2: the targets' addresses are the authorized ones
    AUTHORIZED = "authorized"
    #: weight 3: authorized, but the address cannot be checked
    UNKNOWN = "unknown"
    #: an undefined weight, or records that disagree
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Assertion:
    """The reading of one name's SRV records (:func:`read_records`)."""

    authorization: Authorization
    #: the targets of an authorized name, ``.`` (no addresses) left out, sorted
    targets: tuple[str, ...] = ()
    #: whether a version-1 record asserts explicit authorization of subdomains (port bit 0)
    explicit_subdomains: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class CsaOutcome:
    result: Result
    #: why, for the trace and logs ("" on pass)
    reason: str = ""
    #: the name whose record decided ("" when none did)
    source: str = ""


def read_records(records: tuple[SrvRecord, ...]) -> Assertion:
    """What one name's SRV records assert (pure; the order of the records does not matter)."""
    ours = [r for r in records if r[0] == VERSION]
    if not ours:
        return Assertion(Authorization.NONE)
    explicit = any(port & EXPLICIT_AUTHORIZATION for _prio, _weight, port, _target in ours)
    weights = sorted({weight for _prio, weight, _port, _target in ours})
    if len(weights) > 1:
        return Assertion(Authorization.MALFORMED, explicit_subdomains=explicit,
                         error=f"records disagree (weights {', '.join(map(str, weights))})")
    weight = weights[0]
    if weight == 1:
        return Assertion(Authorization.NOT_AUTHORIZED, explicit_subdomains=explicit)
    if weight == 3:
        return Assertion(Authorization.UNKNOWN, explicit_subdomains=explicit)
    if weight != 2:
        return Assertion(Authorization.MALFORMED, explicit_subdomains=explicit,
                         error=f"weight {weight} is not a CSA authorization (1, 2 or 3)")
    targets = sorted({t.lower().rstrip(".") for _p, _w, _port, t in ours} - {""})
    return Assertion(Authorization.AUTHORIZED, tuple(targets), explicit)


def parents(name: str) -> tuple[str, ...]:
    """The parent domains of ``name`` asked for subdomain assertions: from the second-level
    domain down, the top-level domain and ``name`` itself left out, at most
    :data:`MAX_PARENTS` (``a.b.mail.example.com`` -> example.com, mail.example.com,
    b.mail.example.com)."""
    labels = name.rstrip(".").split(".")
    found = [".".join(labels[i:]) for i in range(len(labels) - 2, 0, -1)]
    return tuple(found[:MAX_PARENTS])


async def check(dns: DnsClient, helo: str, ip: IPAddress, trace: Trace | None = None) -> CsaOutcome:
    """CSA for the client at ``ip`` calling itself ``helo`` (a validated domain name)."""
    own = await dns.resolve(f"{PREFIX}.{helo}", "SRV", trace)
    if own.is_error:
        return CsaOutcome(Result.TEMPERROR, f"SRV lookup failed ({own.outcome.name})", helo)
    assertion = read_records(_srv(own))
    if assertion.authorization is Authorization.NONE:
        return await _parents(dns, helo, trace)
    if assertion.authorization is Authorization.MALFORMED:
        return CsaOutcome(Result.PERMERROR, assertion.error, helo)
    if assertion.authorization is Authorization.NOT_AUTHORIZED:
        return CsaOutcome(Result.FAIL, "not authorized", helo)
    if assertion.authorization is Authorization.UNKNOWN:
        return CsaOutcome(Result.NEUTRAL, "authorized, address not checkable", helo)
    if not assertion.targets:
        return CsaOutcome(Result.FAIL, "authorized, but no target address (target '.')", helo)
    rdtype = "A" if ip.version == 4 else "AAAA"
    answers = await asyncio.gather(*(dns.resolve(t, rdtype, trace) for t in assertion.targets))
    address = str(ip)
    if any(a.outcome is Outcome.ANSWER and address in a.records for a in answers):
        return CsaOutcome(Result.PASS, "", helo)
    failed = [t for t, a in zip(assertion.targets, answers) if a.is_error]
    if failed:
        return CsaOutcome(Result.TEMPERROR, f"address lookup of {failed[0]} failed", helo)
    return CsaOutcome(Result.FAIL, f"{address} is not an address of {', '.join(assertion.targets)}", helo)


async def _parents(dns: DnsClient, helo: str, trace: Trace | None) -> CsaOutcome:
    """No record at the HELO name: does a parent domain require one?"""
    names = parents(helo)
    answers = await asyncio.gather(*(dns.resolve(f"{PREFIX}.{p}", "SRV", trace) for p in names))
    for name, answer in zip(names, answers):
        if answer.is_error:
            return CsaOutcome(Result.TEMPERROR, f"SRV lookup of parent {name} failed ({answer.outcome.name})", name)
        if read_records(_srv(answer)).explicit_subdomains:
            return CsaOutcome(Result.FAIL, f"no record, and {name} requires one for every client under it", name)
    return CsaOutcome(Result.NONE, "no CSA record")


def _srv(answer: DnsAnswer) -> tuple[SrvRecord, ...]:
    return tuple(r for r in answer.records if isinstance(r, tuple) and len(r) == 4)
