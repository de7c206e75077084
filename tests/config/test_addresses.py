"""Listen and nameserver addresses: the forms accepted and the operator-facing refusals."""
from __future__ import annotations

import pytest

from checkid.config import parse_hostport, parse_listen


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:10030", ("tcp", "127.0.0.1", 10030)),
    ("[::1]:10030", ("tcp", "::1", 10030)),
    ("unix:/run/checkid/policy", ("unix", "/run/checkid/policy", 0)),
    ("unix:relative/sock", ("unix", "relative/sock", 0)),
])
def test_parse_listen_accepts_tcp_and_unix(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text, message", [
    ("unix:", "unix: needs a path"),
    ("127.0.0.1", "needs a port"),
    ("::1", "needs a port"),
    ("[::1]", "needs a port"),
    ("localhost:25", "not an IP address"),
    ("127.0.0.1:0", "bad port"),
    ("127.0.0.1:65536", "bad port"),
    ("127.0.0.1:x", "bad port"),
])
def test_parse_listen_refuses_with_a_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_listen(text)


@pytest.mark.parametrize("text, message", [
    ("[::1", "bad address"),
    ("[::1]53", "bad address"),
    ("[::1]:", "bad port"),
    ("example.org", "not an IP address"),
])
def test_parse_hostport_refuses_with_a_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_hostport(text, 53)
