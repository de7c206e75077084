"""The decide seam: every front-end calls only the Decider, through one timed_decide that
logs one line per decision with its latency."""
from __future__ import annotations

import dataclasses
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.config import Config, ListenConfig
from checkid.engine.decision import Action, Decision, Envelope
from checkid.protocols.base import ServerState
from checkid.protocols import decider as seam
from checkid.protocols.decider import timed_decide
from checkid.protocols.milter import codec as milter
from checkid.protocols.milter.events import Connect, EndOfMessage, Helo, Macro, Mail, OptNeg
from checkid.protocols.msgpack_rpc import codec as rpc
from checkid.protocols.postfix_policy import codec as pol
from checkid.protocols.registry import protocol_factory
from checkid.runtime.logs import parse_fields
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
                           "identity=example.net identity_from=helo to=- action=REJECT code=550 xcode=5.7.1 ")
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


def logged(decision, envelope, caplog, decider=None, **kwargs):
    """The one decision record timed_decide writes for ``decision``."""
    with caplog.at_level(logging.INFO, logger="checkid.decision"):
        run(timed_decide(decider or Decider(decision), envelope, "milter", **kwargs))
    (record,) = [r for r in caplog.records if r.name == "checkid.decision"]
    return record


def test_the_line_carries_its_fields_as_data_typed(caplog):
    record = logged(REJECTED, Envelope("192.0.2.1", None, "example.net", "a@example.net", ("b@example.org",)),
                    caplog, queue_id="4QX1", client_port=40123)
    fields = record.fields
    assert fields["frontend"] == "milter" and fields["queue_id"] == "4QX1" and fields["client_port"] == 40123
    assert fields["code"] == 550 and fields["xcode"] == "5.7.1" and fields["action"] == "REJECT"
    assert fields["from"] == "a@example.net" and fields["to"] == "b@example.org" and fields["id"] is None
    assert fields["text"] == REJECTED.text and isinstance(fields["latency_ms"], float)
    # the text line says the same, word for word
    assert dict(parse_fields(record.getMessage()))["text"] == REJECTED.text
    assert {k: v for k, v in parse_fields(record.getMessage())} == {
        k: "-" if v is None else str(v) if not isinstance(v, float) else f"{v:.2f}"
        for k, v in fields.items() if k != "frontend"}


def test_a_decision_report_mode_did_not_enforce_logs_as_would(caplog):
    delivered = Decision(Action.ACCEPT, 250, "", "Sender OK", (), "methods", "fail", would=REJECTED)
    record = logged(delivered, Envelope("192.0.2.1", "example.net"), caplog)
    line = record.getMessage()
    assert " action=would_reject code=550 xcode=5.7.1 " in line and "not authorized by" in line
    assert record.fields["action"] == "would_reject"


def test_control_characters_a_client_sent_cannot_forge_a_line_or_a_field(caplog):
    helo = "evil\nJan  1 00:00:00 mx checkid[1]: INFO checkid.decision: policy action=ACCEPT"
    record = logged(REJECTED, Envelope("192.0.2.1", "x\u2028y", helo, "a\r\n b>@example.net"), caplog)
    line = record.getMessage()
    assert line.isprintable()
    fields = dict(parse_fields(line))
    assert fields["helo"] == helo and fields["id"] == "x\u2028y" and fields["from"] == "a\r\n b>@example.net"
    assert fields["action"] == "REJECT"  # the one the decision gave, not the one in the HELO
    assert [k for k, _ in parse_fields(line)].count("action") == 1


def test_addresses_are_logged_as_the_decider_shows_them(caplog):
    class Hashing(Decider):
        def log_address(self, address):
            return "h:" + address[::-1]

    record = logged(REJECTED, Envelope("192.0.2.1", None, "h.example", "ab@x", ("cd@y", "ef@z")), caplog,
                    decider=Hashing(REJECTED))
    line = record.getMessage()
    assert " from=<h:x@ba> " in line and " to=<h:y@dc,h:z@fe> " in line


_VALUES = st.one_of(st.none(), st.text(max_size=20), st.integers(-10**6, 10**6),
                    st.floats(0, 10**6, allow_nan=False, allow_infinity=False))
_KEYS = st.sampled_from(["queue_id", "ip", "helo", "from", "to", "text", "code", "reason", "latency_ms"])


@given(st.lists(st.dictionaries(_KEYS, _VALUES, min_size=1), min_size=1, max_size=4))
def test_every_rendered_line_reads_back_as_its_fields(lines):
    # several lines in a row: what one line's rendering keeps (the quoted reply text) never
    # leaks into the next; the same text object twice reads back the same
    for fields in lines + lines:
        text = seam.render(fields)
        assert text.isprintable() or not text
        back = dict(parse_fields(text))
        assert list(back) == list(fields)
        for key, value in fields.items():
            if value is None:
                assert back[key] == "-"
            elif isinstance(value, float):
                assert back[key] == f"{value:.2f}"
            elif isinstance(value, int):
                assert int(back[key]) == value
            else:
                assert back[key] == value


def test_a_decision_record_is_the_one_the_record_factory_makes():
    saved = logging.logThreads, logging.logMultiprocessing
    logging.logThreads = logging.logMultiprocessing = False  # the runtime's lean records
    try:
        made = seam._record("policy action=DUNNO")
        plain = logging.LogRecord("checkid.decision", logging.INFO, seam.__file__, 0, "policy action=DUNNO",
                                  None, None, "timed_decide")
        times = {"created", "msecs", "relativeCreated"}
        assert set(made.__dict__) == set(plain.__dict__)
        assert {k: v for k, v in made.__dict__.items() if k not in times} == \
            {k: v for k, v in plain.__dict__.items() if k not in times}
        assert abs(made.created - plain.created) < 60 and made.getMessage() == "policy action=DUNNO"
        assert made.msecs == int((made.created - int(made.created)) * 1000)
    finally:
        logging.logThreads, logging.logMultiprocessing = saved


def test_a_custom_record_factory_still_makes_the_decision_records(caplog):
    made = []
    default = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = default(*args, **kwargs)
        made.append(record)
        return record
    logging.setLogRecordFactory(factory)
    try:
        with caplog.at_level(logging.INFO, logger="checkid.decision"):
            run(timed_decide(Decider(REJECTED), Envelope("192.0.2.1", None, "h.example", "a@x"), "policy"))
    finally:
        logging.setLogRecordFactory(default)
    assert [r.getMessage() for r in made] == [r.getMessage() for r in caplog.records]
    assert len(made) == 1
