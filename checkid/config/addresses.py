"""Address parsing shared by the schema and its users: listen addresses and ``IP[:PORT]``."""
from __future__ import annotations

import ipaddress


def parse_listen(text: str) -> tuple[str, str, int]:
    """``("unix", PATH, 0)`` for ``unix:PATH``, else ``("tcp", HOST, PORT)`` (port required).

    :raises ValueError: with a message fit for the operator
    """
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise ValueError("unix: needs a path")
        return "unix", path, 0
    host, port = parse_hostport(text, 0)
    if port == 0:
        raise ValueError(f"{text!r} needs a port (HOST:PORT, [IPv6]:PORT or unix:PATH)")
    return "tcp", host, port


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """Split ``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address.

    :raises ValueError: with a message fit for the operator
    """
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {whole!r}")
    return int(text)
