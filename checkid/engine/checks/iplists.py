"""In-memory IP lists: allow lists, CIDR block lists and rbldnsd data files.

A list answers "which entry covers this address?" by longest-prefix match, one dict per
prefix length, so a lookup costs at most one dict probe per distinct prefix length in use.
An exclusion (rbldnsd ``!entry``) is an entry whose value is :data:`EXCLUDED`; at equal
length it wins over a listing.

File formats (``FORMAT:PATH`` in configuration; a bare path is ``cidr``):

- ``cidr``: one address or network per line; ``#`` comments.
- ``ip4set`` (rbldnsd): ``127.0.0.0/24``, ``127.0.0`` (a /24), ``127.16-31`` (a range in the
  last given octet), ``a.b.c.d-e.f.g.h``; an optional value ``:A:TXT`` (or ``:A``, or TXT)
  after the entry; a line ``:A:TXT`` sets the default value; ``!entry`` excludes.
- ``ip4trie`` / ``ip6trie`` (rbldnsd): CIDR entries, values and exclusions as above.

``$SOA``/``$NS``/``$TTL`` and other ``$`` directives and ``;`` comments are skipped.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from checkid.errors import ConfigError

FORMATS = ("cidr", "ip4set", "ip4trie", "ip6trie")


@dataclass(frozen=True, slots=True)
class Listing:
    """What an entry says: the A record a DNS list would answer and its TXT reason."""

    a: str = "127.0.0.2"
    txt: str = ""


EXCLUDED = Listing(a="", txt="excluded")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IPList:
    """A longest-prefix-match table for IPv4 and IPv6 together."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        # version -> prefix length -> network number -> listing; lengths kept longest first
        self._tables: dict[int, dict[int, dict[int, Listing]]] = {4: {}, 6: {}}
        self._lengths: dict[int, tuple[int, ...]] = {4: (), 6: ()}
        self.entries = 0

    def add(self, network: Network, listing: Listing = Listing()) -> None:
        table = self._tables[network.version].setdefault(network.prefixlen, {})
        key = int(network.network_address) >> (network.max_prefixlen - network.prefixlen)
        if table.get(key) is not EXCLUDED:
            table[key] = listing
        self.entries += 1
        self._lengths[network.version] = tuple(sorted(self._tables[network.version], reverse=True))

    def lookup(self, ip: IPAddress) -> Listing | None:
        """The most specific listing covering ``ip``; None when unlisted or excluded."""
        version = ip.version
        bits = 32 if version == 4 else 128
        number = int(ip)
        tables = self._tables[version]
        for length in self._lengths[version]:
            hit = tables[length].get(number >> (bits - length))
            if hit is not None:
                return None if hit is EXCLUDED else hit
        return None

    def __contains__(self, ip: IPAddress) -> bool:
        return self.lookup(ip) is not None

    def __len__(self) -> int:
        return self.entries


def from_networks(networks: Iterable[str], name: str = "") -> IPList:
    """A list from address/network texts. :raises ValueError: on a bad entry."""
    result = IPList(name)
    for text in networks:
        result.add(ipaddress.ip_network(text, strict=False))
    return result


def load_file(spec: str) -> IPList:
    """Load ``FORMAT:PATH`` (or a bare PATH in ``cidr`` format).

    :raises ConfigError: naming the file and line at fault
    """
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in FORMATS:
        fmt, path = "cidr", spec
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    return parse(text, fmt, name=Path(path).name, source=path)


def parse(text: str, fmt: str, name: str = "", source: str = "<list>") -> IPList:
    """Parse list data in one of :data:`FORMATS`. :raises ConfigError: with file:line."""
    result = IPList(name)
    default = Listing()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;$":
            continue
        try:
            if fmt == "cidr":
                result.add(ipaddress.ip_network(line.split()[0], strict=False))
                continue
            if line.startswith(":"):
                default = _value(line, default)
                continue
            exclude = line.startswith("!")
            entry, _, value = line.lstrip("!").partition(" ")
            if not value and ":" in entry and fmt != "ip6trie":
                entry, _, rest = entry.partition(":")
                value = ":" + rest
            listing = EXCLUDED if exclude else (_value(value.strip(), default) if value.strip() else default)
            for network in _networks(entry, fmt):
                result.add(network, listing)
        except ValueError as e:
            raise ConfigError(f"{source}:{number}: {e}") from None
    return result


def _value(text: str, default: Listing) -> Listing:
    """``:A:TXT``, ``:A`` or bare TXT; ``$`` in TXT stays for the caller to fill."""
    if not text.startswith(":"):
        return Listing(default.a, text)
    a, _, txt = text[1:].partition(":")
    if a:
        ipaddress.IPv4Address(a)
    return Listing(a or default.a, txt if txt else default.txt)


def _networks(entry: str, fmt: str) -> list[Network]:
    if fmt == "ip6trie":
        return [ipaddress.IPv6Network(entry, strict=False)]
    if fmt == "ip4trie":
        return [ipaddress.IPv4Network(entry, strict=False)]
    # ip4set
    if "/" in entry:
        return [ipaddress.IPv4Network(_pad(entry.split("/")[0]) + "/" + entry.split("/")[1], strict=False)]
    if "-" in entry:
        first, _, last = entry.partition("-")
        octets = first.split(".")
        if "." not in last:  # 127.16-31: a range in the last given octet
            last = ".".join(octets[:-1] + [last])
        lo = ipaddress.IPv4Address(_pad(first, "0"))
        hi = ipaddress.IPv4Address(_pad(last, "255"))
        if hi < lo:
            raise ValueError(f"empty range {entry!r}")
        return list(ipaddress.summarize_address_range(lo, hi))
    octets = entry.split(".")
    if not 1 <= len(octets) <= 4:
        raise ValueError(f"bad entry {entry!r}")
    return [ipaddress.IPv4Network(f"{_pad(entry)}/{8 * len(octets)}")]


def _pad(partial: str, fill: str = "0") -> str:
    octets = partial.split(".")
    if not 1 <= len(octets) <= 4 or not all(o.isdigit() for o in octets):
        raise ValueError(f"bad address {partial!r}")
    return ".".join(octets + [fill] * (4 - len(octets)))
