"""The RPC service's checkID params: headers reach the envelope raw, the body's bound."""
from __future__ import annotations

import pytest

from checkid.protocols.msgpack_rpc.codec import MAX_MESSAGE
from checkid.protocols.msgpack_rpc.service import MAX_BODY, RpcError, checkid_envelope


def test_header_values_reach_the_envelope_raw():
    env = checkid_envelope(["192.0.2.1", "example.com", None, "a@example.com", ["b@example.org"],
                            ["Subject: hi\r\n\tthere\r\n", ["From", " a@example.com"], "X-Tight:no-space"],
                            b"body\r\n"])
    assert env.headers == (("Subject", " hi\r\n\tthere"), ("From", " a@example.com"), ("X-Tight", "no-space"))
    assert env.body == b"body\r\n" and env.message_follows  # the caller may ask again with the message


def test_a_body_is_bounded_below_the_codecs_message_bound():
    assert MAX_BODY < MAX_MESSAGE  # a Body at the bound still fits in one request
    checkid_envelope([{"IP": "192.0.2.1", "Body": b"x" * MAX_BODY}])
    with pytest.raises(RpcError, match=f"Body longer than {MAX_BODY} bytes"):
        checkid_envelope([{"IP": "192.0.2.1", "Body": b"x" * (MAX_BODY + 1)}])
