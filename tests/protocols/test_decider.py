"""The decide seam: every front-end calls only the Decider, through one timed_decide that
logs one line per decision with its latency."""
from __future__ import annotations

import dataclasses
import logging

import pytest

from checkid.config import Config, ListenConfig
from checkid.engine.decision import Envelope
from checkid.protocols.base import ServerState
from checkid.protocols.decider import timed_decide
from checkid.protocols.milter import codec as milter
from checkid.protocols.milter.events import Connect, EndOfMessage, Helo, Macro, Mail, OptNeg
from checkid.protocols.msgpack_rpc import codec as rpc
from checkid.protocols.postfix_policy import codec as pol
from checkid.protocols.registry import protocol_factory
from tests.conftest import run
from tests.protocols.fakes import REJECTED, Decider, connect, until

#: per front-end: the bytes of one transaction that asks for one decision, and its queue id
TRANSACTIONS = {
    "policy": (pol.encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                                   "client_address": "192.0.2.1", "helo_name": "example.net",
                                   "sender": "a@example.net", "recipient": "u@example.org", "instance": "1",
                                   "queue_id": "4QX1"}), "4QX1"),
    "msgpack-rpc": (rpc.encode_request(1, "checkID", ["192.0.2.1", None, "example.net", "a@example.net"]), "-"),
    "milter": (b"".join(milter.encode_command(c) for c in (
        OptNeg(6, 0x1FF, 0x1FFFFF), Connect("h", "4", 25, "192.0.2.1"), Helo("example.net"),
        Macro(b"M", (("i", "4QX1"),)), Mail(("<a@example.net>",)), EndOfMessage())), "4QX1"),
}


def test_timed_decide_logs_one_line_with_the_latency(caplog):
    ticks = iter([10.0, 10.0025])
    decided = dataclasses.replace(REJECTED, identity="example.net", identity_source="helo")
    decider = Decider(decided)
    with caplog.at_level(logging.INFO, logger="checkid.decision"):
        decision = run(timed_decide(decider, Envelope("192.0.2.1", None, "example.net", "a@example.net"),
                                    "policy", "4QX1", clock=lambda: next(ticks)))
    assert decision == decided and decider.fronts == ["policy"]
    (record,) = caplog.records
    line = record.getMessage()
    assert line.startswith("policy queue_id=4QX1 ip=192.0.2.1 id=- helo=example.net from=<a@example.net> "
                           "identity=example.net identity_from=helo action=REJECT code=550 5.7.1")
    assert line.endswith("latency_ms=2.50")


@pytest.mark.parametrize("protocol", sorted(TRANSACTIONS))
def test_every_front_end_decides_through_the_seam_alone_and_logs_once(protocol, caplog):
    data, queue_id = TRANSACTIONS[protocol]

    async def go():
        decider = Decider(REJECTED)  # has decide and recipient_class, nothing else of an engine
        state = ServerState()
        proto = protocol_factory(decider, state, Config(), ListenConfig(protocol, "127.0.0.1:1"))()
        transport = connect(proto)
        proto.data_received(data)
        await until(lambda: transport.data)
        return decider, state, transport

    with caplog.at_level(logging.INFO, logger="checkid.decision"):
        decider, state, transport = run(go())
    assert decider.fronts == [protocol] and decider.envelopes[0].ip == "192.0.2.1"
    assert state.counts[("connections", protocol)] == 1 and state.counts[("internal_errors", protocol)] == 0
    (record,) = [r for r in caplog.records if r.name == "checkid.decision"]
    assert record.getMessage().startswith(f"{protocol} queue_id={queue_id} ip=192.0.2.1 ")
    assert b"not authorized by 'example.net'" in transport.data
