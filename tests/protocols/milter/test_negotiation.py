"""What the milter asks the MTA to send (SMFIP_* in the OPTNEG reply), per what the decider
needs of a message and what the MTA offers; and SKIP for a body no decision reads."""
from __future__ import annotations

import pytest

from checkid.engine.decision import Action, Decision
from checkid.protocols.milter.events import (ACCEPT, CONTINUE, SKIP, Body, ChangeHeader, Data, EndOfHeaders,
                                             EndOfMessage, HeaderField, InsertHeader, Mail, OptNeg, Proto, Rcpt)
from checkid.protocols.milter.session import BODY_NOT_SENT, MilterOptions, MilterSession
from tests.conftest import run
from tests.protocols.fakes import ACCEPTED, AUTHENT, Decider, forged_authent
from tests.protocols.milter.test_session import SMTP

P = Proto
#: what Postfix 3.7 and Sendmail 8.17 offer (reference/milter.md §4.1)
ALL = 0x1FFFFF
#: asked of every v6 MTA that offers them: no reply where it would be CONTINUE, raw header
#: values, no DATA
BASE = (P.NR_CONN | P.NR_HELO | P.NR_DATA | P.NR_HDR | P.NR_EOH | P.NR_BODY | P.NR_UNKN | P.HDR_LEADSPC
        | P.NODATA)
CONTINUED = Decision(Action.CONTINUE, 250, "", "Continue")


class Needing(Decider):
    """The fake decider, saying what of a message it needs (``content_needed``)."""

    __slots__ = ("needs",)

    def __init__(self, *decisions: Decision, needs: tuple[bool, bool], **kwargs: object) -> None:
        super().__init__(*decisions, **kwargs)  # type: ignore[arg-type]
        self.needs = needs

    def content_needed(self) -> tuple[bool, bool]:
        return self.needs


def negotiated(decider: Decider, offer: int) -> int:
    session = MilterSession(decider, MilterOptions())
    (reply,) = run(session.handle(OptNeg(6, 0x1FF, offer), now=0.0))
    assert reply.protocol == session.protocol
    return reply.protocol


@pytest.mark.parametrize("needs, offer, asked", [
    # a decider that does not say: everything (DATA aside)
    (None, ALL, BASE),
    ((True, True), ALL, BASE),
    # no DKIM, but forged headers to remove: the headers, no end of headers, no body
    ((True, False), ALL, BASE | P.NOBODY | P.NOEOH),
    # nothing of the message: no headers, no end of headers, no body
    ((False, False), ALL, BASE | P.NOBODY | P.NOEOH | P.NOHDRS),
    # a body is never read without its headers
    ((False, True), ALL, BASE),
    # the body must be answered (no NR_BODY offered): SKIP, when offered, cuts it short
    ((True, True), ALL & ~P.NR_BODY, (BASE & ~P.NR_BODY) | P.SKIP),
    ((True, True), ALL & ~P.NR_BODY & ~P.SKIP, BASE & ~P.NR_BODY),
    # no body sent at all: no SKIP asked
    ((True, False), ALL & ~P.NR_BODY, (BASE & ~P.NR_BODY) | P.NOBODY | P.NOEOH),
    # only bits the MTA offered
    ((False, False), ALL & ~(P.NOBODY | P.NOHDRS | P.NOEOH | P.NODATA), BASE & ~P.NODATA),
    ((False, False), P.NOBODY | P.NR_CONN, P.NOBODY | P.NR_CONN),
    ((True, True), 0, 0),
])
def test_the_steps_asked_away_follow_what_the_decider_needs_and_the_mta_offers(needs, offer, asked):
    decider = Decider(ACCEPTED) if needs is None else Needing(ACCEPTED, needs=needs)
    assert Proto(negotiated(decider, offer)) == Proto(asked)


def test_a_version_2_mta_is_asked_for_no_protocol_bit():
    session = MilterSession(Needing(ACCEPTED, needs=(False, False)), MilterOptions())
    (reply,) = run(session.handle(OptNeg(2, 0x3F, 0x7F), now=0.0))
    assert reply.protocol == 0


def play(decider, offer, *cmds):
    """The replies to ``cmds`` after OPTNEG with ``offer`` and the connection's commands."""
    session = MilterSession(decider, MilterOptions())

    async def go():
        return [await session.handle(c, now=float(i)) for i, c in enumerate([OptNeg(6, 0x1FF, offer), *SMTP[1:],
                                                                           *cmds])]
    return run(go()), session


def message(*body: bytes, headers=(("Subject", " hi"),)):
    return [Mail(("<a@example.com>",)), Rcpt(("<b@example.org>",)), Data(),
            *(HeaderField(n, v) for n, v in headers), EndOfHeaders(), *(Body(b) for b in body), EndOfMessage()]


NO_NR_BODY = ALL & ~P.NR_BODY


def test_a_body_no_decision_reads_is_skipped_at_its_first_chunk():
    # decided at MAIL: no decision at end of data, the body is not needed
    decider = Decider(ACCEPTED)
    replies_, _ = play(decider, NO_NR_BODY, *message(b"x" * 100))
    assert replies_[-2:] == [[SKIP], [InsertHeader(0, "Authent", " " + AUTHENT.text), ACCEPT]]
    assert decider.digests == []


def test_a_body_without_a_signature_to_hash_is_skipped():
    decider = Decider(CONTINUED, ACCEPTED, sinks=False)  # body_digest: None, no signature parses
    replies_, _ = play(decider, NO_NR_BODY, *message(b"x" * 100))
    assert replies_[-2] == [SKIP]
    assert replies_[-1] == [InsertHeader(0, "Authent", " " + AUTHENT.text), ACCEPT]
    assert decider.envelopes[-1].body == b""


def test_a_body_a_signature_needs_is_taken_whole():
    decider = Decider(CONTINUED, ACCEPTED)
    replies_, _ = play(decider, NO_NR_BODY, *message(b"x" * 100, b"y" * 5))
    assert replies_[-3:-1] == [[CONTINUE], [CONTINUE]]
    ((_, sink),) = decider.digests
    assert sink is not None and sink.data == b"x" * 100 + b"y" * 5 and decider.envelopes[-1].body is sink


def test_without_skip_offered_an_unneeded_body_is_answered_continue():
    replies_, _ = play(Decider(ACCEPTED), NO_NR_BODY & ~P.SKIP, *message(b"x", b"y"))
    assert replies_[-3:-1] == [[CONTINUE], [CONTINUE]]


def test_with_nr_body_no_body_chunk_is_answered_needed_or_not():
    for decider in (Decider(ACCEPTED), Decider(CONTINUED, ACCEPTED)):
        replies_, _ = play(decider, ALL, *message(b"x", b"y"))
        assert replies_[-3:-1] == [[], []]


def test_a_message_without_headers_or_body_still_gets_its_verdict_and_headers():
    # what an MTA sends after NOHDRS | NOEOH | NOBODY | NODATA: envelope, then end of message
    decider = Needing(ACCEPTED, needs=(False, False))
    replies_, session = play(decider, ALL, Mail(("<a@example.com>",)), Rcpt(("<b@example.org>",)), EndOfMessage())
    assert session.protocol & (P.NOHDRS | P.NOBODY | P.NOEOH | P.NODATA) == P.NOHDRS | P.NOBODY | P.NOEOH | P.NODATA
    assert replies_[-1] == [InsertHeader(0, "Authent", " " + AUTHENT.text), ACCEPT]
    assert len(decider.envelopes) == 1


def test_forged_headers_are_still_removed_when_only_the_body_is_asked_away():
    decider = Needing(ACCEPTED, needs=(True, False), forged=forged_authent)
    replies_, session = play(decider, ALL, Mail(("<a@example.com>",)), Rcpt(("<b@example.org>",)),
                             HeaderField("Authent", " forged"), EndOfMessage())
    assert session.protocol & P.NOBODY and not session.protocol & P.NOHDRS
    assert replies_[-1] == [ChangeHeader(1, "Authent", ""), InsertHeader(0, "Authent", " " + AUTHENT.text), ACCEPT]


def test_a_body_asked_away_before_a_reload_is_not_verified_as_an_empty_one():
    # the connection negotiated no body; a policy reload then runs DKIM: hashing an empty
    # body would FAIL every signature, so the engine is told the body was not sent
    decider = Needing(CONTINUED, ACCEPTED, needs=(True, False))
    session = MilterSession(decider, MilterOptions())
    run(session.handle(OptNeg(6, 0x1FF, ALL), now=0.0))
    assert session.protocol & P.NOBODY
    decider.needs = (True, True)  # the reload
    for cmd in (*SMTP[1:], Mail(("<a@example.com>",)), Rcpt(("<b@example.org>",)), HeaderField("From", " a@example.com"),
                EndOfMessage()):
        run(session.handle(cmd, now=0.0))
    assert decider.envelopes[-1].body is BODY_NOT_SENT
    assert decider.digests == []


def test_the_engine_itself_tells_the_milter_what_to_ask_away(make_engine, tmp_path):
    # the real decider, not a fake: a policy without DKIM gets no body (and no end of headers)
    from checkid.config import PolicyConfig
    from checkid.engine.policy import DEFAULT_PATH
    path = tmp_path / "nodkim.py"
    path.write_text(DEFAULT_PATH.read_text().replace('    "DKIM": (4, 4),\n', ""))
    assert negotiated(make_engine(), ALL) == BASE
    assert negotiated(make_engine(policy=PolicyConfig(path=str(path))), ALL) == BASE | P.NOBODY | P.NOEOH
