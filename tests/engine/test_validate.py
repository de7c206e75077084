"""Input validation: hostile client addresses are refused as bad input, cleanly."""
from __future__ import annotations

import ipaddress
import logging

import pytest

from checkid.engine import validate
from checkid.engine.decision import Action, Envelope
from tests.conftest import run

#: what ``ipaddress`` takes and a client address never is: IPv6 scope IDs (of any text, a
#: newline and header-like text included), also on an allow-listed or IPv4-mapped address
SCOPED = ["fe80::1%eth0", "::1%x", "::1%evil\r\nAuthent: forged", "::ffff:192.0.2.1%1", "[::1%lo]", "fe80::1%"]


@pytest.mark.parametrize("text", SCOPED)
def test_parse_ip_refuses_a_scope_id(text):
    assert validate.parse_ip(text) is None


@pytest.mark.parametrize("text", ["１.２.３.４", "1.2.3.4\n5", "1.2.3.4\x00", "::1 x", "0x7f.1", "::g"])
def test_parse_ip_refuses_what_is_not_a_plain_address(text):
    assert validate.parse_ip(text) is None


@pytest.mark.parametrize(("text", "plain"), [
    ("192.0.2.1", "192.0.2.1"), ("[192.0.2.1]", "192.0.2.1"), ("2001:DB8::1", "2001:db8::1"),
    ("::ffff:192.0.2.1", "192.0.2.1"), (" ::1 ", "::1"), ("[2001:db8::1]", "2001:db8::1"),
])
def test_parse_ip_takes_a_plain_address(text, plain):
    assert validate.parse_ip(text) == ipaddress.ip_address(plain)


@pytest.mark.parametrize("ip", SCOPED)
def test_engine_refuses_a_scoped_address_as_bad_input_without_a_traceback(make_engine, caplog, ip):
    """fe80::1%eth0 used to pass validation and make the pre-screen raise (451 4.3.5 and a
    traceback); ::1%<text> was allow-listed, with the text in ``Authent:``."""
    engine = make_engine()
    with caplog.at_level(logging.DEBUG):
        decision = run(engine.decide(Envelope(ip, "example.com", helo="mx.example.com",
                                              sender="<a@example.com>")))
    assert (decision.action, decision.code, decision.stage, decision.reason) == \
        (Action.REJECT, 550, "input", "bad_input")
    assert decision.headers == ()
    assert engine.counts[("bad_input",)] == 1 and not engine.counts[("policy_errors",)]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
