"""The sections the decision engine reads: dns, registry, identity, prescreen, blacklist,
reputation, dkim, policy and headers, each with the value checks its type cannot express.

Each section's ``check(path)`` raises :class:`ConfigError` naming the full key under ``path``
(``dns.timeout: must be positive``); the conversion calls it for every section it builds.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from checkid.config.addresses import parse_hostport
from checkid.errors import ConfigError

#: Spamhaus ZEN return codes (reference/anchors.md §6); 127.255.255.0/24 are errors, never listings.
ZEN_CODES: dict[str, str] = {
    "127.0.0.2": "SBL",
    "127.0.0.3": "SBL-CSS",
    "127.0.0.4": "XBL",
    "127.0.0.5": "XBL",
    "127.0.0.6": "XBL",
    "127.0.0.7": "XBL",
    "127.0.0.9": "SBL-DROP",
    "127.0.0.10": "PBL",
    "127.0.0.11": "PBL",
    "127.0.0.30": "BCL",
}


@dataclass(frozen=True, slots=True)
class DnsConfig:
    #: ``IP`` or ``IP:PORT`` (``[v6]:PORT``) entries; empty means the system's resolv.conf
    nameservers: tuple[str, ...] = ()
    #: seconds one lookup may take, all retries included
    timeout: float = 2.0
    #: seconds a whole decision may take; keep it below the MTA's own timeout (Sendmail's
    #: milter read timeout is 10 s, Exim's ${readsocket} default 5 s: docs/exim.md sets 10 s)
    decision_timeout: float = 8.0
    #: entries in the per-process answer cache (about 0.4 KiB each, bench/workermem.py). The
    #: shared LMDB layer is behind it, so it holds the hot set, not the day: on the border
    #: trace (bench/cachehits.py, 60,000 messages) 25,000 entries hit 34 % of lookups, 50,000
    #: 37 %, an unbounded one 39 %, and the rest are answered by LMDB in microseconds, not
    #: by DNS; 30,000 keeps a worker within 64 MiB (docs/operations.md, worker memory)
    cache_size: int = 30_000
    #: TTL clamps in seconds for positive answers
    min_ttl: int = 5
    max_ttl: int = 86_400
    #: clamp for negative answers (NXDOMAIN/NODATA, TTL from the SOA minimum, RFC 2308)
    max_negative_ttl: int = 3_600

    def check(self, path: str) -> None:
        """:raises ConfigError: a non-positive timeout, a negative size or TTL, a bad nameserver"""
        for name in ("timeout", "decision_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{path}.{name}: must be positive")
        if self.timeout > self.decision_timeout:
            raise ConfigError(f"{path}.timeout: must not exceed {path}.decision_timeout")
        for name in ("cache_size", "min_ttl", "max_ttl", "max_negative_ttl"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}: must not be negative")
        if self.min_ttl > self.max_ttl:
            raise ConfigError(f"{path}.min_ttl: must not exceed {path}.max_ttl")
        for i, ns in enumerate(self.nameservers):
            try:
                parse_hostport(ns, 53)
            except ValueError as e:
                raise ConfigError(f"{path}.nameservers[{i}]: {e}") from None


@dataclass(frozen=True, slots=True)
class DnsList:
    """A DNS block list (DNSBL) queried with the reversed client address."""

    #: the list's zone, e.g. ``zen.spamhaus.org``
    zone: str
    #: name shown in replies and logs; defaults to the zone
    name: str = ""
    #: answer address -> sub-list or reason; empty means any 127.0.0.0/24 answer lists
    codes: dict[str, str] = field(default_factory=dict)

    def check(self, path: str) -> None:
        """:raises ConfigError: an answer code that is not an IPv4 address"""
        _check_ipv4_keys(self.codes, f"{path}.codes")


@dataclass(frozen=True, slots=True)
class PrescreenConfig:
    #: networks accepted at once (own networks, trusted relays)
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: local block lists: plain CIDR lists or rbldnsd ip4set/ip4trie/ip6trie files
    block_files: tuple[str, ...] = ()
    #: DNSBLs for heavily spamming IPs; a hit rejects before any registry query
    dnsbl: tuple[DnsList, ...] = (DnsList(zone="zen.spamhaus.org", name="Spamhaus ZEN", codes=ZEN_CODES),)
    #: HELO names accepted unchecked: a name, or ``.example.com`` for every name under it
    skip_helo: tuple[str, ...] = ()
    #: MAIL FROM domains accepted unchecked: a domain, or ``.example.com`` for its subdomains
    skip_sender_domains: tuple[str, ...] = ()
    #: recipients whose mail is accepted unchecked (``postmaster@example.org``, a domain, or
    #: ``.example.org`` for its subdomains); a transaction is skipped when every recipient is
    skip_recipients: tuple[str, ...] = ()
    #: mail from a client that logged in (SASL, as the MTA reports it) is accepted unchecked
    skip_authenticated: bool = True

    def check(self, path: str) -> None:
        """:raises ConfigError: an ``allow`` entry that is not an address or network, a skip
        entry that is not a name (or an address, for ``skip_recipients``)"""
        for i, net in enumerate(self.allow):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"{path}.allow[{i}]: not an address or network: {net!r}") from None
        for key in ("skip_helo", "skip_sender_domains", "skip_recipients"):
            for i, entry in enumerate(getattr(self, key)):
                name = entry.rpartition("@")[2] if key == "skip_recipients" else entry
                local = entry.rpartition("@")[0] if key == "skip_recipients" else ""
                if "@" in entry and (not local or name.startswith(".")):
                    raise ConfigError(f"{path}.{key}[{i}]: not an address or domain: {entry!r}")
                if not _skip_name(name.removeprefix(".")):
                    what = "an address or domain" if key == "skip_recipients" else "a domain name"
                    raise ConfigError(f"{path}.{key}[{i}]: not {what}: {entry!r}")


@dataclass(frozen=True, slots=True)
class BlacklistConfig:
    """The aggressive IP lists, applied only to mail that did not authenticate."""

    dnsbl: tuple[DnsList, ...] = ()
    block_files: tuple[str, ...] = ()
    #: what a hit leads to
    action: Literal["filter", "reject"] = "filter"


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    #: the registry is queried as TXT ``<ID>.<zone>``
    zone: str = "registry.open-mail.org"


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    #: where the identity comes from when no ``ID`` was declared, in order
    fallback: tuple[Literal["helo", "mail_from"], ...] = ("helo", "mail_from")
    #: which fallback source is used: the first whose domain has a registry record (the
    #: lookups go out together), or the first that is a valid domain name
    select: Literal["first_with_record", "first_valid"] = "first_with_record"


@dataclass(frozen=True, slots=True)
class DkimConfig:
    """DKIM (RFC 6376, RFC 8463) at end of data."""

    #: a signature's ``d=`` passes for an ID when it is the ID itself, or the ID or one of
    #: its parents (``d=example.com`` for ID ``mail.example.com``)
    match: Literal["exact", "parent"] = "parent"
    #: bytes of body hashed at most; a signature that needs more is not verified (PERMERROR)
    max_body: int = 10 * 1024 * 1024
    #: RSA keys shorter than this fail (RFC 8301 §3.2)
    min_key_bits: int = 1024
    #: RSA keys longer than this are not used (PERMERROR): RFC 8301 §3.2 asks verifiers for
    #: 1024 to 4096 bits, and a sender's huge key would cost the event loop seconds
    max_key_bits: int = 4096
    #: signatures verified per message at most (the first ones, top down); the rest are ignored
    max_signatures: int = 8

    def check(self, path: str) -> None:
        """:raises ConfigError: a size or count out of range"""
        if not 0 <= self.max_body <= 1 << 30:
            raise ConfigError(f"{path}.max_body: must be 0 to 1 GiB")
        if not 512 <= self.min_key_bits <= 16384:
            raise ConfigError(f"{path}.min_key_bits: must be 512 to 16384")
        if not self.min_key_bits <= self.max_key_bits <= 16384:
            raise ConfigError(f"{path}.max_key_bits: must be {path}.min_key_bits to 16384")
        if not 1 <= self.max_signatures <= 64:
            raise ConfigError(f"{path}.max_signatures: must be 1 to 64")


@dataclass(frozen=True, slots=True)
class RatingService:
    """A DNS rating service: an IP- or ID-keyed zone whose answers map to grades."""

    #: the service name used in ratings and TRUSTED_SERVICES, e.g. ``Q1``
    name: str
    zone: str
    #: what the query is keyed on: the reversed client IP, or the identity
    key: Literal["ip", "id"] = "ip"
    #: answer address -> grade (a letter or an integer of up to 3 digits)
    grades: dict[str, str] = field(default_factory=dict)

    def check(self, path: str) -> None:
        """:raises ConfigError: an answer address that is not an IPv4 address"""
        _check_ipv4_keys(self.grades, f"{path}.grades")


@dataclass(frozen=True, slots=True)
class ReputationConfig:
    #: DNS rating services, asked in addition to the registry record's ratings
    dns: tuple[RatingService, ...] = ()
    #: file of per-recipient threshold overrides (address, @domain or domain per line)
    recipient_thresholds: str = ""


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    #: the operator's policy file; empty means the embedded ``checkid/policy/default.py``
    path: str = ""
    #: what a DNS temporary error leads to: a 4xx, or fail open to the spam filter
    on_temperror: Literal["tempfail", "filter"] = "tempfail"
    #: seconds between checks of the policy file for edits (each worker reloads it)
    reload_interval: float = 1.0
    #: ``report``: a dry run. What would be refused (REJECT, TEMPFAIL, DISCARD) is accepted
    #: instead, its ``Authent:`` saying ``would=REJECT``, its log line ``action=would_reject``;
    #: bad input is still refused
    mode: Literal["enforce", "report"] = "enforce"
    #: how the decision log line shows the sender and the recipients: as given, or as the
    #: first 16 hex digits of their SHA-256 (HMAC-SHA-256 with ``log_hash_key`` when set)
    log_addresses: Literal["plain", "hashed"] = "plain"
    #: the key of the log's address hashes; without one, a list of known addresses undoes them
    log_hash_key: str = ""

    def check(self, path: str) -> None:
        """:raises ConfigError: a reload interval outside 0.1 to 3600 seconds"""
        if not 0.1 <= self.reload_interval <= 3600:
            raise ConfigError(f"{path}.reload_interval: must be 0.1 to 3600 seconds")


@dataclass(frozen=True, slots=True)
class HeadersConfig:
    #: also add RFC 8601 ``Authentication-Results``
    authentication_results: bool = False
    #: also add RFC 7208 ``Received-SPF`` when SPF ran
    received_spf: bool = False
    #: the authserv-id / receiver name; empty means this host's FQDN
    authserv_id: str = ""
    #: header fields a client may not bring: removed from every incoming message before it is
    #: delivered (``Authentication-Results`` only when it names this site's authserv-id;
    #: RFC 8601 §5)
    remove: tuple[str, ...] = ("Authent", "Authentication-Results")
    #: other authserv-ids of this site (the fleet's other hosts, other milters'): an incoming
    #: ``Authentication-Results`` naming one of them is removed too
    site_ids: tuple[str, ...] = ()

    def check(self, path: str) -> None:
        """:raises ConfigError: a header name that is not an RFC 5322 field name"""
        for i, name in enumerate(self.remove):
            if not name or not all(33 <= ord(c) <= 126 and c != ":" for c in name):
                raise ConfigError(f"{path}.remove[{i}]: not a header field name: {name!r}")


def _skip_name(name: str) -> bool:
    """Whether ``name`` can be a skip list's domain: dot-separated labels of letters, digits,
    hyphens (and underscores, seen in HELO names), no empty label."""
    labels = name.lower().rstrip(".").split(".")
    return bool(name) and len(name) <= 253 and all(
        0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label) for label in labels)


def _check_ipv4_keys(table: dict[str, str], path: str) -> None:
    for code in table:
        try:
            ipaddress.IPv4Address(code)
        except ValueError:
            raise ConfigError(f"{path}: not an IPv4 address: {code!r}") from None
