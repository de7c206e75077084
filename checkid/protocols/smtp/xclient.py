"""Postfix XCLIENT, the front door's side (Postfix XCLIENT_README; reference/front-door.md §1.2):
which attributes a backend offers, and the XCLIENT command lines that hand it the real
client's attributes.

This module does no I/O. The relay client reads the backend's EHLO reply, asks
:func:`offered_attributes`, sends the lines :func:`xclient_commands` gives one at a time
(each answered 220 on success, after which the client must send EHLO again), then EHLO.
"""
from __future__ import annotations

import ipaddress
import re

#: RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including the CRLF
MAX_COMMAND_LINE = 512
#: Postfix refuses (501) a NAME or HELO longer than VALID_HOSTNAME_LEN, 255 (smtpd.c
#: xclient_cmd); such a value is sent as UNAVAILABLE rather than lose the whole command
MAX_NAME_VALUE = 255
#: XCLIENT_README: the value for an attribute that is not known
UNAVAILABLE = "[UNAVAILABLE]"
#: XCLIENT_README: a name or address lookup that failed for now
TEMPUNAVAIL = "[TEMPUNAVAIL]"
#: attributes whose values are SMTP client or server addresses
_ADDRESSES = {"ADDR", "DESTADDR"}
#: XCLIENT_README: once NAME or ADDR is sent, Postfix checks its authorization against the new
#: values, so the client usually may send no more XCLIENT: these go in the last command
_LAST = ("NAME", "ADDR")
#: attributes that stand for "unknown" with UNAVAILABLE when empty or too long; Postfix refuses
#: an empty value (501 "attribute=value expected"), so other empty attributes are left out
_MAY_BE_UNAVAILABLE = {"NAME", "ADDR", "HELO"}
_COMMAND = "XCLIENT"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_REPLY_PREFIX = re.compile(r"[0-9]{3}[ -]")


def xtext(value: str) -> str:
    """``value`` as RFC 1891 §5 xtext: printable US-ASCII 33..126 except ``+`` and ``=`` as
    is, every other octet of its UTF-8 form as ``+HH`` (upper-case hex)."""
    if value.isascii() and value.isprintable() and " " not in value and "+" not in value and "=" not in value:
        return value  # the common case: a host name or an address
    return "".join(chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}"
                   for b in value.encode("utf-8", "surrogateescape"))


def offered_attributes(ehlo_keywords: dict[str, str] | list[str]) -> set[str]:
    """The XCLIENT attribute names a backend offers, upper-case; empty when it offers none.

    :param ehlo_keywords: the EHLO reply as keyword → parameters, or as its lines (with or
        without the ``250-`` prefix; the first line, the greeting, names no keyword XCLIENT)
    """
    if isinstance(ehlo_keywords, dict):
        lines = [f"{keyword} {params}" for keyword, params in ehlo_keywords.items()]
    else:
        lines = [_REPLY_PREFIX.sub("", line, count=1) if _REPLY_PREFIX.match(line) else line
                 for line in ehlo_keywords]
    offered: set[str] = set()
    for line in lines:
        words = line.split()
        if words and words[0].upper() == _COMMAND:
            offered.update(word.upper() for word in words[1:])
    return offered


def xclient_commands(attrs: dict[str, str], offered: set[str]) -> list[bytes]:
    """The XCLIENT command lines that send ``attrs``, in the order to send them.

    Only attributes the backend offered are sent (names compare case-insensitively). ADDR and
    DESTADDR go as a bare IPv4 address or ``IPV6:`` + the address, without brackets (an
    IPv4-mapped IPv6 address as the IPv4 address, as Postfix itself logs such a client); NAME
    and HELO longer than :data:`MAX_NAME_VALUE` (or too long for a line once xtext-encoded)
    and empty NAME/ADDR/HELO go as ``[UNAVAILABLE]``; other empty values are left out. Values
    are xtext of their UTF-8 form. Each line is at most :data:`MAX_COMMAND_LINE` octets with
    its CRLF, as few lines as that allows; NAME and ADDR are in the last one (if they do not
    fit together, NAME goes as ``[UNAVAILABLE]``).

    :returns: the lines, each ending in CRLF; none when nothing offered is to be sent
    :raises ValueError: on an attribute name that is not a word, an ADDR/DESTADDR that is not
        an address, or an attribute too long for a command line of its own
    """
    wanted = {name.upper() for name in offered}
    items: dict[str, str] = {}
    for name, value in attrs.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"XCLIENT attribute name invalid: {name!r}")
        upper = name.upper()
        if upper not in wanted:
            continue
        value = _value(upper, value)
        if value:
            items[upper] = value
    encoded = {name: f"{name}={xtext(value)}" for name, value in items.items()}
    for name, item in encoded.items():
        if not _fits([item]):
            if name not in _MAY_BE_UNAVAILABLE:
                raise ValueError(f"XCLIENT attribute too long for one command: {item[:40]}...")
            encoded[name] = f"{name}={UNAVAILABLE}"
    first = [item for name, item in encoded.items() if name not in _LAST]
    last = [encoded[name] for name in _LAST if name in encoded]
    if not _fits(last):
        last[0] = f"NAME={UNAVAILABLE}"  # only NAME can be long; ADDR is at most 50 octets
    return [_line(group) for group in _pack(first, last)]


def _value(name: str, value: str) -> str:
    """One attribute's value as sent, before xtext ('' to leave it out)."""
    if name in _MAY_BE_UNAVAILABLE and (not value or (name != "ADDR" and len(value) > MAX_NAME_VALUE)):
        return UNAVAILABLE
    if name in _ADDRESSES:
        # XCLIENT_README allows only [UNAVAILABLE] besides an address here
        return UNAVAILABLE if value in (UNAVAILABLE, TEMPUNAVAIL) else _address(value)
    return value


def _address(value: str) -> str:
    text = value.strip("[]")
    if text[:5].upper() == "IPV6:":
        text = text[5:]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"XCLIENT address invalid: {value!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr) if addr.version == 4 else f"IPV6:{addr}"


def _length(items: list[str]) -> int:
    """Octets of the command line carrying ``items``, CRLF included."""
    return len(_COMMAND) + sum(1 + len(item) for item in items) + 2


def _fits(items: list[str]) -> bool:
    return _length(items) <= MAX_COMMAND_LINE


def _pack(first: list[str], last: list[str]) -> list[list[str]]:
    """``first`` then ``last`` in order, cut into as few lines as fit, ``last`` in the final one.

    Filling from the end keeps NAME and ADDR in the final line, and filling greedily an
    order-kept sequence gives the fewest lines (no line could take the next item of the one
    before it).
    """
    groups: list[list[str]] = []
    current = list(last)
    for item in reversed(first):
        if current and not _fits([item] + current):
            groups.append(current)
            current = []
        current.insert(0, item)
    if current:
        groups.append(current)
    return groups[::-1]


def _line(items: list[str]) -> bytes:
    return (" ".join([_COMMAND, *items]) + "\r\n").encode("ascii")
