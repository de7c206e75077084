"""The milter session: negotiation, one verdict per command, decisions to responses."""
from __future__ import annotations

import asyncio
import time

import pytest

from checkid.engine.decision import Action, Decision, Header as Hdr
from checkid.errors import ProtocolError
from checkid.protocols.milter.events import (ACCEPT, CONTINUE, DISCARD, PROGRESS, Abort, Body, Connect, Data,
                                             EndOfHeaders, EndOfMessage, Flag, Header, Helo, InsertHeader, Macro,
                                             Mail, OptNeg, OptNegReply, Proto, Quarantine, Quit, QuitNoClose, Rcpt,
                                             ReplyCode, Unknown)
from checkid.protocols.milter.replies import fold
from checkid.protocols.milter.session import MilterOptions, MilterSession
from tests.conftest import run

AUTHENT = Hdr("Authent:", "192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B")
ACCEPTED = Decision(Action.ACCEPT, 250, "", "Sender OK", (AUTHENT,))
REJECTED = Decision(Action.REJECT, 550, "5.7.1", "Sending MTA '192.0.2.1' not authorized by 'example.net'")
OFFER = OptNeg(6, 0x1FF, 0x1FFFFF)


class Fake:
    def __init__(self, *decisions, delay=0.0):
        self.decisions = list(decisions)
        self.envelopes = []
        self.delay = delay

    async def decide(self, env):
        self.envelopes.append(env)
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.decisions.pop(0) if len(self.decisions) > 1 else self.decisions[0]


def play(engine, *cmds, options=MilterOptions(), rclass=lambda r: ""):
    sent = []
    session = MilterSession(engine.decide, options, time.perf_counter, sent.append, rclass)

    async def go():
        return [await session.handle(c) for c in cmds]
    return run(go()), sent, session


SMTP = [OFFER, Macro(b"C", (("{client_addr}", "192.0.2.1"),)), Connect("mx.example.com", "4", 25, "192.0.2.1"),
        Helo("example.com")]


def test_negotiation_takes_only_offered_bits_and_asks_for_macros():
    (reply,), _, _ = play(Fake(ACCEPTED), OFFER)
    assert isinstance(reply[0], OptNegReply) and reply[0].version == 6
    assert reply[0].actions == Flag.ADDHDRS | Flag.SETSYMLIST
    assert reply[0].protocol & ~0x1FFFFF == 0 and reply[0].protocol & Proto.NR_HDR
    assert dict(reply[0].macros)[0] == "j {client_addr}"
    (old,), _, _ = play(Fake(ACCEPTED), OptNeg(2, 0x3F, 0x7F))  # a v2 MTA: no v6 bits, no macro lists
    assert (old[0].version, old[0].protocol, old[0].macros) == (2, 0, ())
    (narrow,), _, _ = play(Fake(ACCEPTED), OptNeg(6, 0x1, 0x0))
    assert (narrow[0].actions, narrow[0].protocol) == (Flag.ADDHDRS, 0)


def test_an_accepted_message_gets_the_headers_on_top_then_accept():
    engine = Fake(ACCEPTED)
    replies_, _, _ = play(engine, *SMTP, Mail(("<alice@example.com>", "SIZE=100", "BODY=8BITMIME")),
                          Rcpt(("<bob@example.org>",)), Data(), Header("Subject", "hi\n\tthere"), EndOfHeaders(),
                          Body(b"hello\r\n"), EndOfMessage())
    assert replies_ == [replies_[0], [], [], [], [CONTINUE], [CONTINUE], [], [], [], [],
                        [InsertHeader(0, "Authent", AUTHENT.text), ACCEPT]]
    (env,) = engine.envelopes  # decided once, at MAIL, on the HELO identity
    assert (env.ip, env.id, env.helo, env.sender, env.rcpts) == ("192.0.2.1", None, "example.com",
                                                                 "alice@example.com", ())


def test_a_rejection_is_one_replycode_and_nothing_else():
    replies_, _, _ = play(Fake(REJECTED), *SMTP, Mail(("<alice@example.net>",)))
    assert replies_[-1] == [ReplyCode("550 5.7.1 Sending MTA '192.0.2.1' not authorized by 'example.net'")]


def test_several_messages_abort_and_rset_do_not_desync():
    engine = Fake(ACCEPTED, REJECTED, ACCEPTED)
    replies_, _, _ = play(engine, *SMTP, Mail(("<a@example.com>",)), Rcpt(("<b@example.org>",)), Abort(),
                          Abort(), Mail(("<c@example.com>",)), Abort(), Helo("example.com"),
                          Mail(("<>",)), Rcpt(("b@example.org",)), Data(), EndOfMessage(), Abort(), Quit())
    assert [r for r in replies_[4:]] == [
        [CONTINUE], [CONTINUE], [], [], [ReplyCode("550 5.7.1 Sending MTA '192.0.2.1' not authorized by "
                                                   "'example.net'")], [], [], [CONTINUE], [CONTINUE], [],
        [InsertHeader(0, "Authent", AUTHENT.text), ACCEPT], [], []]
    assert [e.sender for e in engine.envelopes] == ["a@example.com", "c@example.com", ""]


@pytest.mark.parametrize("connect, ip", [
    (Connect("h", "6", 1, "IPv6:0:0:0:0:0:0:0:1"), "0:0:0:0:0:0:0:1"),  # Sendmail
    (Connect("h", "6", 1, "2001:db8::25"), "2001:db8::25"),
    (Connect("h", "4", 1, "203.0.113.9"), "203.0.113.9"),
])
def test_connect_families(connect, ip):
    engine = Fake(ACCEPTED)
    play(engine, OFFER, connect, Helo("example.com"), Mail(("<a@example.com>",)))
    assert engine.envelopes[0].ip == ip


@pytest.mark.parametrize("connect", [Connect("localhost", "U"), Connect("localhost", "L", 0, "/run/sock")])
def test_local_connections_are_not_judged(connect):
    engine = Fake(REJECTED)
    replies_, _, _ = play(engine, OFFER, connect, Helo("x"), Mail(("<a@x>",)), Rcpt(("<b@y>",)), EndOfMessage())
    assert replies_[-3:] == [[CONTINUE], [CONTINUE], [CONTINUE]] and engine.envelopes == []


def test_an_id_verb_passed_to_unknown_is_recorded_as_the_declared_id():
    engine = Fake(ACCEPTED)
    replies_, _, _ = play(engine, *SMTP, Unknown("ID example.org"), Mail(("<a@example.com>",)))
    assert replies_[-2] == []  # no reply negotiated: the MTA rejects the verb itself
    assert engine.envelopes[0].id == "example.org"


def test_quit_nc_resets_to_connected_without_a_new_negotiation():
    engine = Fake(ACCEPTED)
    replies_, _, session = play(engine, *SMTP, Mail(("<a@example.com>",)), QuitNoClose(),
                                Connect("other", "4", 1, "198.51.100.1"), Helo("example.com"), Mail(("<b@example.com>",)))
    assert replies_[-1] == [CONTINUE] and engine.envelopes[-1].ip == "198.51.100.1" and not session.closed
    with pytest.raises(ProtocolError, match="second option negotiation"):
        play(engine, OFFER, OFFER)


def test_commands_before_negotiation_are_refused():
    with pytest.raises(ProtocolError, match="before option negotiation"):
        play(Fake(ACCEPTED), Connect("h", "4", 1, "192.0.2.1"))


def test_content_decision_when_the_engine_says_continue():
    later = Decision(Action.FILTER, 250, "", "ok", (AUTHENT,))
    engine = Fake(Decision(Action.CONTINUE, 250, "", "Continue"), later)
    replies_, _, _ = play(engine, *SMTP, Mail(("<a@example.com>",)), Rcpt(("<b@example.org>",)), Data(),
                          Header("From", "a@example.com"), EndOfHeaders(), Body(b"x" * 10), EndOfMessage())
    assert replies_[-1] == [InsertHeader(0, "Authent", AUTHENT.text), CONTINUE]
    final = engine.envelopes[-1]
    assert final.rcpts == ("b@example.org",) and final.headers == (("From", "a@example.com"),)
    assert final.body == b"x" * 10


def test_filter_quarantines_when_configured_and_negotiated():
    engine = Fake(Decision(Action.FILTER, 250, "", "ok", (AUTHENT,)))
    replies_, _, _ = play(engine, OptNeg(6, 0x1FF, 0x1FFFFF), Connect("h", "4", 1, "192.0.2.1"), Helo("x.example"),
                          Mail(("<a@x.example>",)), EndOfMessage(), options=MilterOptions(quarantine="unauthenticated"))
    assert replies_[0][0].actions & Flag.QUARANTINE
    assert replies_[-1][-2:] == [Quarantine("unauthenticated"), CONTINUE]


def test_discard_and_per_recipient_rejection():
    replies_, _, _ = play(Fake(Decision(Action.DISCARD, 250, "", "dropped")), *SMTP, Mail(("<a@example.com>",)))
    assert replies_[-1] == [DISCARD]
    engine = Fake(ACCEPTED, Decision(Action.REJECT, 550, "5.7.1", "Sender 'x' has a poor reputation"))
    replies_, _, _ = play(engine, *SMTP, Mail(("<a@example.com>",)), Rcpt(("<strict@example.org>",)),
                          rclass=lambda r: "strict@example.org" if r.startswith("strict") else "")
    assert replies_[-1] == [ReplyCode("550 5.7.1 Sender 'x' has a poor reputation")]
    assert engine.envelopes[-1].rcpts == ("strict@example.org",)


def test_progress_is_sent_while_a_decision_at_end_of_message_is_slow():
    engine = Fake(Decision(Action.CONTINUE, 250, "", "Continue"), ACCEPTED, delay=0.0)
    cmds = [*SMTP, Mail(("<a@example.com>",)), EndOfMessage()]

    class Slow(Fake):
        async def decide(self, env):
            self.envelopes.append(env)
            if len(self.envelopes) == 2:
                await asyncio.sleep(0.35)
            return self.decisions[len(self.envelopes) - 1]

    slow = Slow(Decision(Action.CONTINUE, 250, "", "Continue"), ACCEPTED)
    replies_, sent, _ = play(slow, *cmds, options=MilterOptions(progress_interval=0.1))
    assert len(sent) >= 2 and all(s == [PROGRESS] for s in sent)
    assert replies_[-1][-1] == ACCEPT
    del engine


def test_header_folding_at_78_columns():
    text = "mx.example.org; " + " ".join(f"spf=pass smtp.mailfrom=sender{i}.example" for i in range(6))
    folded = fold("Authentication-Results", text)
    lines = ("Authentication-Results: " + folded).split("\n")
    assert len(lines) > 1 and all(len(line) <= 78 for line in lines)
    assert all(line.startswith("\t") for line in lines[1:])
    assert folded.replace("\n\t", " ") == text  # unfolding gives the text back
    word = "ratings=" + ",".join(f"S{i}:A" for i in range(30))  # no space to fold at: kept whole
    assert fold("Authent", f"192.0.2.1 example.com SPF1 PASS {word}") == f"192.0.2.1 example.com SPF1 PASS\n\t{word}"
