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


def test_message_follows_false_says_no_message_will_come():
    assert not checkid_envelope(["192.0.2.1", None, "dkim.example", None, [], [], None, False]).message_follows
    assert not checkid_envelope([{"IP": "192.0.2.1", "MessageFollows": False}]).message_follows
    assert checkid_envelope([{"IP": "192.0.2.1", "MessageFollows": True}]).message_follows
    with pytest.raises(RpcError, match="MessageFollows must be true or false"):
        checkid_envelope([{"IP": "192.0.2.1", "MessageFollows": "no"}])


def test_trace_answers_the_decision_and_what_each_stage_did(make_engine):
    from checkid.protocols.base import ServerState
    from checkid.protocols.msgpack_rpc.service import RpcService
    from tests.conftest import run
    service = RpcService(make_engine(), ServerState())
    (action, reply, headers), lines = run(service.call("trace", ["192.0.2.1", "example.com"]))
    assert (action, reply) == ("ACCEPT", [250, "", "Sender OK"])
    stages = [stage for stage, _message in lines]
    assert stages.index("prescreen") < stages.index("registry") < stages.index("methods")
    # a DKIM-only identity, no message to follow: decided now, not CONTINUE
    (action, _, _), _ = run(service.call("trace", ["192.0.2.1", None, "dkim.example", None, [], [], None, False]))
    assert action == "FILTER"
