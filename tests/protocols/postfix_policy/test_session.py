"""The session: decide at the configured stage, once per instance."""
from __future__ import annotations

import asyncio

import pytest

from checkid.engine.decision import Action, Decision, Header
from checkid.errors import ProtocolError
from checkid.protocols.postfix_policy.session import PolicyOptions, PolicySession
from tests.conftest import run
from tests.protocols.fakes import Decider


ACCEPT = Decision(Action.ACCEPT, 250, "", "Sender OK", (Header("Authent:", "x"),))
REJECT = Decision(Action.REJECT, 550, "5.7.1", "No")


def req(state="RCPT", instance="i1", **attrs):
    return {"request": "smtpd_access_policy", "protocol_state": state, "instance": instance,
            "client_address": "192.0.2.1", "helo_name": "example.com", "sender": "a@example.com", **attrs}


def answers(decider, *requests, options=PolicyOptions(), pipelined=False):
    session = PolicySession(decider, options)

    async def go():
        if pipelined:
            return list(await asyncio.gather(*(session.answer(r) for r in requests)))
        return [await session.answer(r) for r in requests]
    return run(go())


def test_other_stages_are_dunno_and_not_decided():
    decider = Decider(ACCEPT)
    assert answers(decider, req("CONNECT"), req("MAIL"), req("DATA")) == ["DUNNO"] * 3
    assert decider.envelopes == []


def test_one_decision_and_one_header_per_instance():
    decider = Decider(ACCEPT)
    out = answers(decider, req(recipient="a@x"), req(recipient="b@x"), req(recipient="c@x"))
    assert out == ["PREPEND Authent: x", "DUNNO", "DUNNO"]
    assert len(decider.envelopes) == 1
    env = decider.envelopes[0]
    assert (env.ip, env.id, env.helo, env.sender, env.rcpts) == ("192.0.2.1", None, "example.com",
                                                                 "a@example.com", ("a@x",))


def test_a_reject_is_repeated_for_every_recipient_and_a_new_instance_decides_again():
    decider = Decider(REJECT)
    out = answers(decider, req(), req(), req(instance="i2"))
    assert out == ["550 5.7.1 No"] * 3
    assert len(decider.envelopes) == 2


def test_pipelined_requests_of_one_instance_share_one_decision():
    decider = Decider(ACCEPT)
    out = answers(decider, req(recipient="a@x"), req(recipient="b@x"), pipelined=True)
    assert sorted(out) == ["DUNNO", "PREPEND Authent: x"] and len(decider.envelopes) == 1


def test_recipients_with_their_own_thresholds_get_their_own_decision_and_one_header():
    decider = Decider(ACCEPT, classes={"strict@x": "strict@x"})
    out = answers(decider, req(recipient="a@x"), req(recipient="strict@x"), req(recipient="b@x"))
    assert out == ["PREPEND Authent: x", "DUNNO", "DUNNO"]
    assert [e.rcpts for e in decider.envelopes] == [("a@x",), ("strict@x",)]


def test_decide_at_another_stage():
    decider = Decider(REJECT)
    assert answers(decider, req("RCPT"), req("MAIL"), options=PolicyOptions(decide_at="MAIL")) == ["DUNNO", "550 5.7.1 No"]


def test_not_a_policy_request_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="not a policy request"):
        answers(Decider(ACCEPT), {"protocol_state": "RCPT"})


@pytest.mark.parametrize("state", ["RCPT", "END-OF-MESSAGE"])
def test_no_message_follows_a_policy_request_not_even_at_end_of_message(state):
    decider = Decider(ACCEPT)
    answers(decider, req(state), options=PolicyOptions(decide_at=state))
    (envelope,) = decider.envelopes
    assert envelope.message_follows is False and envelope.body is None and envelope.headers == ()


def test_the_sasl_login_and_the_client_port_reach_the_decision(caplog):
    import logging
    decider = Decider(ACCEPT)
    with caplog.at_level(logging.INFO, logger="checkid.decision"):
        answers(decider, req(sasl_username="alice", client_port="40123", queue_id="4QX1"),
                req(instance="i2", client_port="x"))
    assert [e.authenticated for e in decider.envelopes] == ["alice", None]
    fields = [r.fields for r in caplog.records if r.name == "checkid.decision"]
    assert [(f["client_port"], f["queue_id"]) for f in fields] == [(40123, "4QX1"), (None, None)]


def test_each_message_gets_the_action_of_its_own_decision_when_the_same_one_repeats():
    # the same Decision object again (as the decision memo answers a repeated request), then
    # another, then the first once more: the action follows the decision every time
    decider = Decider(ACCEPT, ACCEPT, REJECT, ACCEPT)
    out = answers(decider, req(instance="i1"), req(instance="i2"), req(instance="i3"), req(instance="i4"))
    assert out == ["PREPEND Authent: x", "PREPEND Authent: x", "550 5.7.1 No", "PREPEND Authent: x"]
