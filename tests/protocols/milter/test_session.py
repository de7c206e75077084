"""The milter session: negotiation, one verdict per command, decisions to responses."""
from __future__ import annotations

import pytest

from checkid.engine.decision import Action, Decision
from checkid.errors import ProtocolError
from checkid.protocols import eager
from checkid.protocols.milter.events import (ACCEPT, CONTINUE, DISCARD, PROGRESS, Abort, Body, ChangeHeader,
                                             Connect, Data,
                                             EndOfHeaders, EndOfMessage, Flag, HeaderField, Helo, InsertHeader,
                                             Macro, Mail, OptNeg, OptNegReply, Proto, Quarantine, Quit, QuitNoClose,
                                             Rcpt, ReplyCode, Unknown)
from checkid.protocols.milter.replies import fold
from checkid.protocols.milter.session import MilterOptions, MilterSession
from tests.conftest import run
from tests.protocols.fakes import ACCEPTED, AUTHENT, REJECTED, Decider, forged_authent

OFFER = OptNeg(6, 0x1FF, 0x1FFFFF)


def play(decider, *cmds, options=MilterOptions()):
    session = MilterSession(decider, options)

    async def go():
        return [await session.handle(c, now=float(i)) for i, c in enumerate(cmds)]
    return run(go()), session


SMTP = [OFFER, Macro(b"C", (("{client_addr}", "192.0.2.1"),)), Connect("mx.example.com", "4", 25, "192.0.2.1"),
        Helo("example.com")]


def test_negotiation_takes_only_offered_bits_and_asks_for_macros():
    (reply,), _ = play(Decider(ACCEPTED), OFFER)
    assert isinstance(reply[0], OptNegReply) and reply[0].version == 6
    assert reply[0].actions == Flag.ADDHDRS | Flag.CHGHDRS | Flag.SETSYMLIST
    assert reply[0].protocol & ~0x1FFFFF == 0 and reply[0].protocol & Proto.NR_HDR
    assert reply[0].protocol & Proto.HDR_LEADSPC
    assert dict(reply[0].macros)[0] == "j {client_addr}"
    (old,), _ = play(Decider(ACCEPTED), OptNeg(2, 0x3F, 0x7F))  # a v2 MTA: no v6 bits, no macro lists
    assert (old[0].version, old[0].protocol, old[0].macros) == (2, 0, ())
    (narrow,), _ = play(Decider(ACCEPTED), OptNeg(6, 0x1, 0x0))
    assert (narrow[0].actions, narrow[0].protocol) == (Flag.ADDHDRS, 0)


def test_an_accepted_message_gets_the_headers_on_top_then_accept():
    decider = Decider(ACCEPTED)
    replies_, _ = play(decider, *SMTP, Mail(("<alice@example.com>", "SIZE=100", "BODY=8BITMIME")),
                          Rcpt(("<bob@example.org>",)), Data(), HeaderField("Subject", "hi\n\tthere"), EndOfHeaders(),
                          Body(b"hello\r\n"), EndOfMessage())
    assert replies_ == [replies_[0], [], [], [], [CONTINUE], [CONTINUE], [], [], [], [],
                        [InsertHeader(0, "Authent", " " + AUTHENT.text), ACCEPT]]
    (env,) = decider.envelopes  # decided once, at MAIL, on the HELO identity
    assert (env.ip, env.id, env.helo, env.sender, env.rcpts) == ("192.0.2.1", None, "example.com",
                                                                 "alice@example.com", ())


def test_a_rejection_is_one_replycode_and_nothing_else():
    replies_, _ = play(Decider(REJECTED), *SMTP, Mail(("<alice@example.net>",)))
    assert replies_[-1] == [ReplyCode("550 5.7.1 Sending MTA '192.0.2.1' not authorized by 'example.net'")]


def test_several_messages_abort_and_rset_do_not_desync():
    decider = Decider(ACCEPTED, REJECTED, ACCEPTED)
    replies_, _ = play(decider, *SMTP, Mail(("<a@example.com>",)), Rcpt(("<b@example.org>",)), Abort(),
                          Abort(), Mail(("<c@example.com>",)), Abort(), Helo("example.com"),
                          Mail(("<>",)), Rcpt(("b@example.org",)), Data(), EndOfMessage(), Abort(), Quit())
    assert [r for r in replies_[4:]] == [
        [CONTINUE], [CONTINUE], [], [], [ReplyCode("550 5.7.1 Sending MTA '192.0.2.1' not authorized by "
                                                   "'example.net'")], [], [], [CONTINUE], [CONTINUE], [],
        [InsertHeader(0, "Authent", " " + AUTHENT.text), ACCEPT], [], []]
    assert [e.sender for e in decider.envelopes] == ["a@example.com", "c@example.com", ""]


@pytest.mark.parametrize("connect, ip", [
    (Connect("h", "6", 1, "IPv6:0:0:0:0:0:0:0:1"), "0:0:0:0:0:0:0:1"),  # Sendmail
    (Connect("h", "6", 1, "2001:db8::25"), "2001:db8::25"),
    (Connect("h", "4", 1, "203.0.113.9"), "203.0.113.9"),
])
def test_connect_families(connect, ip):
    decider = Decider(ACCEPTED)
    play(decider, OFFER, connect, Helo("example.com"), Mail(("<a@example.com>",)))
    assert decider.envelopes[0].ip == ip


@pytest.mark.parametrize("connect", [Connect("localhost", "U"), Connect("localhost", "L", 0, "/run/sock")])
def test_local_connections_are_not_judged(connect):
    decider = Decider(REJECTED)
    replies_, _ = play(decider, OFFER, connect, Helo("x"), Mail(("<a@x>",)), Rcpt(("<b@y>",)), EndOfMessage())
    assert replies_[-3:] == [[CONTINUE], [CONTINUE], [CONTINUE]] and decider.envelopes == []


def test_an_id_verb_passed_to_unknown_is_recorded_as_the_declared_id():
    decider = Decider(ACCEPTED)
    replies_, _ = play(decider, *SMTP, Unknown("ID example.org"), Mail(("<a@example.com>",)))
    assert replies_[-2] == []  # no reply negotiated: the MTA rejects the verb itself
    assert decider.envelopes[0].id == "example.org"


def test_quit_nc_resets_to_connected_without_a_new_negotiation():
    decider = Decider(ACCEPTED)
    replies_, session = play(decider, *SMTP, Mail(("<a@example.com>",)), QuitNoClose(),
                                Connect("other", "4", 1, "198.51.100.1"), Helo("example.com"), Mail(("<b@example.com>",)))
    assert replies_[-1] == [CONTINUE] and decider.envelopes[-1].ip == "198.51.100.1" and not session.closed
    with pytest.raises(ProtocolError, match="second option negotiation"):
        play(decider, OFFER, OFFER)


def test_commands_before_negotiation_are_refused():
    with pytest.raises(ProtocolError, match="before option negotiation"):
        play(Decider(ACCEPTED), Connect("h", "4", 1, "192.0.2.1"))


def test_content_decision_when_the_engine_says_continue():
    later = Decision(Action.FILTER, 250, "", "ok", (AUTHENT,))
    decider = Decider(Decision(Action.CONTINUE, 250, "", "Continue"), later)
    replies_, _ = play(decider, *SMTP, Mail(("<a@example.com>",)), Rcpt(("<b@example.org>",)), Data(),
                          HeaderField("From", " a@example.com"), EndOfHeaders(), Body(b"x" * 10), EndOfMessage())
    assert replies_[-1] == [InsertHeader(0, "Authent", " " + AUTHENT.text), CONTINUE]
    final = decider.envelopes[-1]
    assert final.rcpts == ("b@example.org",) and final.headers == (("From", " a@example.com"),)
    ((headers, sink),) = decider.digests
    assert final.body is sink and headers == final.headers and sink.data == b"x" * 10


def test_filter_quarantines_when_configured_and_negotiated():
    decider = Decider(Decision(Action.FILTER, 250, "", "ok", (AUTHENT,)))
    replies_, _ = play(decider, OptNeg(6, 0x1FF, 0x1FFFFF), Connect("h", "4", 1, "192.0.2.1"), Helo("x.example"),
                          Mail(("<a@x.example>",)), EndOfMessage(), options=MilterOptions(quarantine="unauthenticated"))
    assert replies_[0][0].actions & Flag.QUARANTINE
    assert replies_[-1][-2:] == [Quarantine("unauthenticated"), CONTINUE]


def test_discard_and_per_recipient_rejection():
    replies_, _ = play(Decider(Decision(Action.DISCARD, 250, "", "dropped")), *SMTP, Mail(("<a@example.com>",)))
    assert replies_[-1] == [DISCARD]
    decider = Decider(ACCEPTED, Decision(Action.REJECT, 550, "5.7.1", "Sender 'x' has a poor reputation"),
                  classes={"strict@example.org": "strict@example.org"})
    replies_, _ = play(decider, *SMTP, Mail(("<a@example.com>",)), Rcpt(("<strict@example.org>",)))
    assert replies_[-1] == [ReplyCode("550 5.7.1 Sender 'x' has a poor reputation")]
    assert decider.envelopes[-1].rcpts == ("strict@example.org",)


def test_progress_is_due_every_interval_while_a_decision_at_end_of_message_is_pending():
    async def go():
        decider = Decider(Decision(Action.CONTINUE, 250, "", "Continue"), ACCEPTED)
        session = MilterSession(decider, MilterOptions(progress_interval=5.0))
        for command in (*SMTP, Mail(("<a@example.com>",))):
            await session.handle(command, now=0.0)
        idle = session.get_timer()
        decider.hold = True
        eom = eager.start(session.handle(EndOfMessage(), now=100.0))  # waits for the held decision
        due = session.get_timer()
        seen = [(t, session.handle_timer(t)) for t in (104.9, 105.0, 105.1, 110.0, 112.0, 115.0)]
        decider.release()
        replies_ = await eom
        return idle, due, seen, replies_, session.get_timer(), session.handle_timer(200.0)

    idle, due, seen, replies_, after, late = run(go())
    assert idle is None and due == 105.0
    assert seen == [(104.9, []), (105.0, [PROGRESS]), (105.1, []), (110.0, [PROGRESS]), (112.0, []),
                    (115.0, [PROGRESS])]
    assert replies_[-1] == ACCEPT and after is None and late == []


def test_header_folding_at_78_columns():
    text = "mx.example.org; " + " ".join(f"spf=pass smtp.mailfrom=sender{i}.example" for i in range(6))
    folded = fold("Authentication-Results", text)
    lines = ("Authentication-Results: " + folded).split("\n")
    assert len(lines) > 1 and all(len(line) <= 78 for line in lines)
    assert all(line.startswith("\t") for line in lines[1:])
    assert folded.replace("\n\t", " ") == text  # unfolding gives the text back
    word = "ratings=" + ",".join(f"S{i}:A" for i in range(30))  # no space to fold at: kept whole
    assert fold("Authent", f"192.0.2.1 example.com SPF1 PASS {word}") == f"192.0.2.1 example.com SPF1 PASS\n\t{word}"


# -- raw header values, forged headers, the body sink ------------------------------------------
NO_LEADSPC = OptNeg(6, 0x1FF, 0x1FFFFF & ~Proto.HDR_LEADSPC)
CONTINUED = Decision(Action.CONTINUE, 250, "", "Continue")


def message(*headers, body=(b"hello\r\n",)):
    return [Mail(("<a@example.com>",)), Rcpt(("<b@example.org>",)), Data(),
            *(HeaderField(n, v) for n, v in headers), EndOfHeaders(), *(Body(b) for b in body), EndOfMessage()]


def test_with_leadspc_values_arrive_raw_and_inserted_values_carry_their_space():
    decider = Decider(CONTINUED, ACCEPTED)
    replies_, session = play(decider, *SMTP, *message(("Subject", " hi\n\tthere"), ("X-Tight", "no-space")))
    assert session.protocol & Proto.HDR_LEADSPC
    assert decider.asked == [("Subject", " hi\n\tthere"), ("X-Tight", "no-space")]
    assert decider.envelopes[-1].headers == (("Subject", " hi\n\tthere"), ("X-Tight", "no-space"))
    assert replies_[-1] == [InsertHeader(0, "Authent", " " + AUTHENT.text), ACCEPT]


def test_without_leadspc_the_space_the_mta_ate_is_put_back_and_inserts_carry_none():
    decider = Decider(CONTINUED, ACCEPTED)
    replies_, session = play(decider, NO_LEADSPC, *SMTP[1:], *message(("Subject", "hi\n\tthere")))
    assert not session.protocol & Proto.HDR_LEADSPC
    assert decider.asked == [("Subject", " hi\n\tthere")]
    assert decider.envelopes[-1].headers == (("Subject", " hi\n\tthere"),)
    assert decider.digests[0][0] == (("Subject", " hi\n\tthere"),)
    assert replies_[-1] == [InsertHeader(0, "Authent", AUTHENT.text), ACCEPT]


def test_without_leadspc_a_value_starting_with_a_tab_is_kept_as_it_came():
    # the MTA strips one space after the colon, never a tab (Postfix milter8.c)
    decider = Decider(CONTINUED, ACCEPTED)
    play(decider, NO_LEADSPC, *SMTP[1:], *message(("Subject", "\thi")))
    assert decider.envelopes[-1].headers == (("Subject", "\thi"),)


def test_more_headers_than_are_kept_tell_the_engine_its_list_is_not_complete():
    from checkid.protocols.milter.session import MAX_HEADERS
    decider = Decider(CONTINUED, ACCEPTED)
    play(decider, *SMTP, *message(*((f"X-{i}", " v") for i in range(MAX_HEADERS + 1))))
    assert len(decider.envelopes[-1].headers) == MAX_HEADERS and not decider.envelopes[-1].headers_complete
    decider = Decider(CONTINUED, ACCEPTED)
    play(decider, *SMTP, *message(("Subject", " hi")))
    assert decider.envelopes[-1].headers_complete


FORGED_MESSAGE = (("Authentication-Results", " mx.checkid.test; spf=pass smtp.mailfrom=example.com"),
                  ("authentication-results", " other.example; dkim=pass header.d=example.com"),
                  ("Subject", " hi"),
                  ("AUTHENTICATION-RESULTS", " mx.checkid.test; none"),
                  ("Authent", " 192.0.2.1 example.com SPF1 PASS"))


@pytest.mark.parametrize("verdict", [ACCEPTED, Decision(Action.FILTER, 250, "", "ok", (AUTHENT,)),
                                     Decision(Action.CONTINUE, 250, "", "no opinion", (AUTHENT,))])
def test_forged_headers_are_deleted_by_index_before_checkids_own_are_inserted(verdict):
    decider = Decider(verdict, forged=forged_authent)
    replies_, session = play(decider, *SMTP, *message(*FORGED_MESSAGE))
    eom = replies_[-1]
    deletions = [r for r in eom if isinstance(r, ChangeHeader)]
    # ours are the 1st and the 3rd Authentication-Results (names counted case-insensitively)
    # and the Authent; the foreign one (2nd) stays
    assert sorted((d.name.lower(), d.index, d.value) for d in deletions) == [
        ("authent", 1, ""), ("authentication-results", 1, ""), ("authentication-results", 3, "")]
    assert eom[:len(deletions)] == deletions  # before any insert: indexes of the message as received
    assert InsertHeader(0, "Authent", " " + AUTHENT.text) in eom[len(deletions):]
    same_name = [d.index for d in deletions if d.name.lower() == "authentication-results"]
    assert same_name == sorted(same_name, reverse=True)  # the last first: renumbering cannot shift them
    assert session.counts[("forged_headers_removed", "milter")] == 3


def test_every_message_that_goes_through_loses_its_forged_headers_and_refused_ones_get_no_edits():
    forged = (("Authent", " fake"),)
    # several messages on one connection: each counts its own headers from 1
    decider = Decider(ACCEPTED, forged=forged_authent)
    replies_, _ = play(decider, *SMTP, *message(*forged), Abort(), *message(*forged, ("Authent", " two")))
    eoms = [r for r in replies_ if r and r[-1] == ACCEPT]
    assert [[r for r in eom if isinstance(r, ChangeHeader)] for eom in eoms] == [
        [ChangeHeader(1, "Authent", "")], [ChangeHeader(2, "Authent", ""), ChangeHeader(1, "Authent", "")]]
    # a refusal at end of message: no edits, one verdict
    decider = Decider(CONTINUED, REJECTED, forged=forged_authent)
    replies_, _ = play(decider, *SMTP, *message(*forged))
    assert replies_[-1] == [ReplyCode("550 5.7.1 Sending MTA '192.0.2.1' not authorized by 'example.net'")]
    # a local connection is not judged, but its forged headers go too
    decider = Decider(REJECTED, forged=forged_authent)
    replies_, _ = play(decider, OFFER, Connect("localhost", "L", 0, "/run/sock"), Helo("x"), *message(*forged))
    assert replies_[-1] == [ChangeHeader(1, "Authent", ""), CONTINUE] and decider.envelopes == []


def test_without_chghdrs_granted_forged_headers_stay_counted_and_logged_once(caplog):
    decider = Decider(ACCEPTED, forged=forged_authent)
    offer = OptNeg(6, 0x1FF & ~Flag.CHGHDRS, 0x1FFFFF)
    with caplog.at_level("WARNING", logger="checkid.protocols.milter.session"):
        replies_, session = play(decider, offer, *SMTP[1:], *message(("Authent", " a")),
                                 *message(("Authent", " b"), ("Authent", " c")))
    assert not replies_[0][0].actions & Flag.CHGHDRS
    assert not any(isinstance(r, ChangeHeader) for rs in replies_ for r in rs)
    assert session.counts[("forged_headers_kept", "milter")] == 3
    assert not session.counts[("forged_headers_removed", "milter")]
    assert len([r for r in caplog.records if "SMFIF_CHGHDRS" in r.getMessage()]) == 1


def test_body_chunks_reach_the_sink_in_order_and_the_eom_envelope_carries_it():
    decider = Decider(CONTINUED, ACCEPTED)
    cmds = message(("From", " a@example.com"), body=(b"one\r\n", b"two\r\n"))
    cmds[-1] = EndOfMessage(b"three\r\n")  # libmilter's last chunk
    play(decider, *SMTP, *cmds)
    ((headers, sink),) = decider.digests
    assert headers == (("From", " a@example.com"),)
    assert sink.chunks == [b"one\r\n", b"two\r\n", b"three\r\n"]
    assert decider.envelopes[-1].body is sink


def test_no_sink_is_asked_when_the_decision_at_mail_stands_and_none_means_an_empty_body():
    decider = Decider(ACCEPTED)
    play(decider, *SMTP, *message(("From", " a@example.com")))
    assert decider.digests == [] and len(decider.envelopes) == 1
    decider = Decider(CONTINUED, ACCEPTED, sinks=False)  # the engine needs no body
    play(decider, *SMTP, *message(("From", " a@example.com")))
    assert decider.envelopes[-1].body == b"" and decider.envelopes[-1].headers == (("From", " a@example.com"),)
    decider = Decider(CONTINUED, ACCEPTED)  # no end of headers: the sink is asked at end of message
    play(decider, *SMTP, Mail(("<a@example.com>",)), EndOfMessage())
    assert decider.digests == [((), decider.envelopes[-1].body)]


def test_the_body_is_streamed_not_held():
    import tracemalloc

    class Counting:
        total = 0

        def update(self, chunk):
            Counting.total += len(chunk)

    class Streaming(Decider):
        __slots__ = ()

        def body_digest(self, headers):
            return Counting()  # a sink that keeps nothing

    decider = Streaming(CONTINUED, ACCEPTED)
    chunk = b"x" * 65533 + b"\r\n"  # Postfix fills each BODY packet to 65535 bytes
    n = 64  # 4 MiB of body

    async def go():
        session = MilterSession(decider, MilterOptions())
        for cmd in (*SMTP, Mail(("<a@example.com>",)), EndOfHeaders()):
            await session.handle(cmd, now=0.0)
        tracemalloc.start()
        try:
            for _ in range(n):
                await session.handle(Body(chunk), now=0.0)
            await session.handle(EndOfMessage(), now=0.0)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak = run(go())
    assert Counting.total == n * len(chunk)
    assert peak < 1024 * 1024  # far less than the 4 MiB that went through


def test_the_sasl_login_and_the_client_port_reach_the_decision():
    (reply, *_), _ = play(Decider(ACCEPTED), OFFER)
    assert "{auth_authen}" in dict(reply[0].macros)[2].split()  # asked for at MAIL
    decider = Decider(ACCEPTED)
    play(decider, *SMTP, Macro(b"M", (("i", ""), ("{auth_authen}", "alice"))), Mail(("<a@example.com>",)),
         Abort(), Macro(b"M", (("i", ""),)), Mail(("<b@example.com>",)))
    assert [e.authenticated for e in decider.envelopes] == ["alice", None]


def test_a_queue_id_is_not_logged_for_the_next_message(caplog):
    import logging
    decider = Decider(ACCEPTED)
    with caplog.at_level(logging.INFO, logger="checkid.decision"):
        play(decider, *SMTP, Macro(b"M", ()), Mail(("<a@example.com>",)), Macro(b"E", (("i", "4QX1"),)),
             EndOfMessage(), Macro(b"M", ()), Mail(("<b@example.com>",)))
    lines = [r.fields for r in caplog.records if r.name == "checkid.decision"]
    assert [(f["from"], f["queue_id"], f["client_port"]) for f in lines] == [
        ("a@example.com", None, 25), ("b@example.com", None, 25)]


def test_a_skipped_first_recipient_does_not_speak_for_the_others():
    skipped = Decision(Action.ACCEPT, 250, "", "Sender OK", (AUTHENT,), "skip", "skip_recipients")
    decider = Decider(skipped, REJECTED, classes={"postmaster@example.org": "(skip)"})
    replies_, _ = play(decider, *SMTP, Mail(("<a@example.net>",)), Rcpt(("<postmaster@example.org>",)),
                       Rcpt(("<bob@example.org>",)), Rcpt(("<postmaster@example.org>",)),
                       options=MilterOptions(decide_at="RCPT"))
    assert replies_[-3:] == [[CONTINUE], [ReplyCode("550 5.7.1 Sending MTA '192.0.2.1' not authorized by "
                                                    "'example.net'")], [CONTINUE]]
    assert [e.rcpts for e in decider.envelopes] == [("postmaster@example.org",), ("bob@example.org",)]


# -- what a connection may hold (issue 14) ----------------------------------------------------
from checkid.protocols.limits import LimitExceeded  # noqa: E402
from checkid.protocols.milter import session as milter_session  # noqa: E402


def refused_limit(*cmds):
    """The ``limit`` of the LimitExceeded the commands end with (None: all taken)."""
    try:
        play(Decider(ACCEPTED), *cmds)
    except LimitExceeded as e:
        return e.limit
    return None


def test_session_macros_with_new_names_are_refused_past_the_connections_bound():
    flood = [Macro(b"C", ((f"{{m{i}}}", "v" * 100),)) for i in range(milter_session.MAX_MACROS + 1)]
    assert refused_limit(OFFER, *flood) == "macros"
    many_bytes = [Macro(b"C", tuple((f"{{b{i}.{j}}}", "v" * 4000) for j in range(8))) for i in range(3)]
    assert refused_limit(OFFER, *many_bytes) == "macros"  # 96 kB > MAX_MACRO_BYTES in 24 macros


def test_session_macros_past_a_stage_name_or_value_bound_are_refused():
    assert refused_limit(OFFER, Macro(b"C", tuple((f"m{i}", "") for i in range(65)))) == "macros"
    assert refused_limit(OFFER, Macro(b"C", (("i", "v" * (milter_session.MAX_MACRO_VALUE + 1)),))) == "macro_size"
    assert refused_limit(OFFER, Macro(b"C", (("n" * 129, "v"),))) == "macro_size"


def test_session_macros_sent_again_replace_their_values_and_never_add_up():
    again = [Macro(b"M", (("i", "Q" * 2000), ("{auth_authen}", "u" * 2000))) for _ in range(1000)]
    _, session = play(Decider(ACCEPTED), *SMTP, *again, Macro(b"M", (("i", "QID"),)))
    assert session.conn.macros["i"] == "QID" and "auth_authen" not in session.conn.macros
    assert session.conn.macro_bytes == sum(len(n) + len(v) for n, v in session.conn.macros.items())


def test_session_recipients_of_one_message_are_refused_past_their_bound():
    rcpts = [Rcpt((f"<u{i}@example.org>",)) for i in range(milter_session.MAX_RCPTS + 1)]
    assert refused_limit(*SMTP, Mail(("<a@example.com>",)), *rcpts) == "rcpts"
    big = [Rcpt(("<" + "u" * 500_000 + f"{i}@example.org>",)) for i in range(9)]
    assert refused_limit(*SMTP, Mail(("<a@example.com>",)), *big) == "rcpts"  # 4.5 MB > MAX_RCPT_BYTES
    # every message starts afresh
    per_message = [Mail(("<a@example.com>",)), *rcpts[:-1], Abort()] * 2
    assert refused_limit(*SMTP, *per_message) is None


def test_session_header_names_counted_for_deletion_are_bounded():
    names = [HeaderField(f"X-{i}", "v") for i in range(milter_session.MAX_HEADER_NAMES + 500)]
    _, session = play(Decider(ACCEPTED, forged=forged_authent), *SMTP, Mail(("<a@example.com>",)), *names,
                      HeaderField("Authent", "forged"))
    assert len(session.tx.seen) == milter_session.MAX_HEADER_NAMES
    assert session.tx.forged == [] and session.counts[("forged_headers_kept", "milter")] == 1


def test_session_step_answers_at_once_what_needs_no_decision():
    async def go():
        session = MilterSession(Decider(), MilterOptions())
        plain = [session.step(c, now=0.0) for c in (OFFER, Connect("h", "4", 25, "192.0.2.1"), Helo("example.com"))]
        mail = session.step(Mail(("<a@example.com>",)), now=0.0)
        decided = await mail
        rest = [session.step(c, now=0.0) for c in (Data(), HeaderField("Subject", "x"), EndOfHeaders())]
        eom = session.step(EndOfMessage(), now=0.0)  # the decision at MAIL stands: no coroutine
        return plain, mail, decided, rest, eom

    plain, mail, decided, rest, eom = run(go())
    assert all(isinstance(r, list) for r in plain) and isinstance(plain[0][0], OptNegReply)
    assert not isinstance(mail, list) and decided == [CONTINUE]
    assert rest == [[], [], []]  # no-reply bits negotiated
    assert eom == [InsertHeader(0, "Authent", " " + fold("Authent", AUTHENT.text)), ACCEPT]


def test_session_step_refuses_commands_before_and_a_second_negotiation():
    session = MilterSession(Decider(), MilterOptions())
    with pytest.raises(ProtocolError, match="Helo before option negotiation"):
        session.step(Helo("example.com"), now=0.0)
    session.step(OFFER, now=0.0)
    with pytest.raises(ProtocolError, match="second option negotiation"):
        session.step(OFFER, now=0.0)
