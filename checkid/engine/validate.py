"""Input checks: what the MTA hands over is data from the Internet, never trusted."""
from __future__ import annotations

import functools
import ipaddress
import re

from checkid.engine.checks.iplists import IPAddress

#: RFC 5321 §4.5.3.1.2: a domain is at most 255 octets (253 characters in text form)
MAX_DOMAIN = 253
#: RFC 5321 §4.5.3.1.3: a path (the address with its angle brackets) is at most 256 octets
MAX_ADDRESS = 256
#: Bound on recipients per transaction (RFC 5321 §4.5.3.1.8 asks servers to take 100)
MAX_RCPTS = 1000

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
#: what a plain address is written with: ASCII hex digits, dots (IPv4 and an IPv6 address's
#: IPv4 tail) and colons. ``ipaddress`` also takes an IPv6 scope ID (``fe80::1%eth0``, any
#: text after the ``%``) that no client address on the Internet has: it is refused as bad
#: input, not carried into the checks and the ``Authent:`` header.
_PLAIN_IP = re.compile(r"[0-9A-Fa-f.:]+\Z")


# Pure functions of their text, asked again for every transaction of a busy sender: cached.
@functools.lru_cache(maxsize=8192)
def parse_ip(text: str) -> IPAddress | None:
    """The client address, IPv4-mapped IPv6 folded to IPv4; None when it is not a plain
    IPv4 or IPv6 address (unparseable, or with a scope ID or any other decoration)."""
    plain = text.strip().strip("[]")
    if not _PLAIN_IP.match(plain):
        return None
    try:
        ip = ipaddress.ip_address(plain)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:  # _PLAIN_IP lets none through; the rule, said twice
            return None
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=8192)
def domain(text: str) -> str | None:
    """``text`` as a lower-case fully qualified domain name, or None when it is not one."""
    name = text.strip().lower().rstrip(".")
    if not name or len(name) > MAX_DOMAIN or "." not in name:
        return None
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return None
    return name


def address_domain(address: str) -> str | None:
    """The domain of a MAIL FROM address (``<user@example.org>``), or None."""
    local, at, dom = address.strip().strip("<>").rpartition("@")
    return domain(dom) if at and local else None
