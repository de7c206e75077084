"""The front door's session with a fake decider and a fake backend: the ID extension, the
decisions at MAIL, RCPT and end of data, what reaches the backend, limits and failures."""
from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkid.engine.decision import Action, Decision, Header
from checkid.protocols.smtp import codec
from checkid.protocols.smtp.events import Reply
from checkid.protocols.smtp.session import SmtpOptions, SmtpSession, State
from checkid.runtime.metrics import COUNTERS
from tests.conftest import run, split
from tests.protocols.fakes import ACCEPTED, AUTHENT, REJECTED, Decider, forged_authent
from tests.protocols.smtp.fakes import QUEUED, FakeBackend

CONTINUED = Decision(Action.CONTINUE, 250, "", "no verdict yet", (), "methods")
TEMPFAILED = Decision(Action.TEMPFAIL, 451, "4.4.3", "DNS lookup timed out", (), "registry")
DISCARDED = Decision(Action.DISCARD, 250, "", "dropped", (), "policy")
FILTERED = Decision(Action.FILTER, 250, "", "to the filter", (Header("Authent:", "192.0.2.1 x SPF1 FAIL"),), "x")
MESSAGE = b"Subject: hello\r\nFrom: a@example.com\r\n\r\n.dot line\r\nbody\r\n"
WALL = 1_700_000_000.0


class Client:
    """The session driven as the server drives it: wire bytes through the codec, a DATA's
    answer deciding the codec's mode."""

    def __init__(self, decider=None, backend=None, options=SmtpOptions(hostname="door.checkid.test"),
                 ip="192.0.2.1"):
        self.decider = decider or Decider(ACCEPTED)
        self.backend = backend or FakeBackend()
        self.session = SmtpSession(self.decider, self.backend, options, ip, wall=lambda: WALL)
        self.parser = codec.CommandParser(max_size=options.max_message, bare_lf=options.bare_lf)
        self.greeting = run(self.session.open())

    def send(self, wire: bytes) -> list[Reply]:
        async def go():
            out = []
            self.parser.receive_data(wire)
            while (event := self.parser.next_event()) is not None:
                out += await self.session.handle(event)
                if self.parser.mode is codec.Mode.WAIT:
                    if self.session.state is State.DATA:
                        self.parser.start_data()
                    elif self.session.state is State.TLS:
                        self.parser.start_tls()
                    else:
                        self.parser.resume()
            return out
        return run(go())

    def say(self, line: str) -> Reply:
        (reply,) = self.send(line.encode() + b"\r\n")
        return reply


def greeted(**kw) -> Client:
    client = Client(**kw)
    assert client.say("EHLO client.example.com").code == 250
    return client


def codes(replies):
    return [r.code for r in replies]


def test_greeting_waits_for_the_backend_and_ehlo_relays_only_what_can_be_relayed():
    client = Client()
    assert client.greeting == [Reply(220, ("door.checkid.test ESMTP checkid",))]
    ehlo = client.say("EHLO client.example.com")
    assert ehlo.lines[0] == "door.checkid.test greets client.example.com"
    assert set(ehlo.lines[1:]) == {"PIPELINING", "SIZE 10240000", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "ID"}
    assert client.backend.helos == ["client.example.com"]


def test_ehlo_never_advertises_what_the_backend_lacks_and_size_is_the_smaller():
    small = Client(backend=FakeBackend(extensions={"SIZE": "5000", "CHUNKING": "", "STARTTLS": ""}),
                   options=SmtpOptions(max_message=100_000))
    assert small.say("EHLO c.example").lines[1:] == ("SIZE 5000", "ID")
    big = Client(backend=FakeBackend(extensions={"SIZE": "0"}), options=SmtpOptions(max_message=1000))
    assert big.say("EHLO c.example").lines[1:] == ("SIZE 1000", "ID")  # SIZE 0: the backend has no limit


def test_backend_unreachable_at_connect_is_421_and_the_end():
    client = Client(backend=FakeBackend(fail_connect=True))
    assert codes(client.greeting) == [421] and client.greeting[0].xcode == "4.3.0"
    assert client.session.closed


def test_backend_refusing_its_greeting_is_421_and_the_end_at_the_clients_helo():
    """The banner goes out once the connection is open; the backend's own greeting is
    waited for at HELO/EHLO, where its refusal ends the session like an unreachable backend."""
    for verb in ("EHLO", "HELO"):
        client = Client(backend=FakeBackend(fail_greeting=True))
        assert codes(client.greeting) == [220]
        reply = client.say(f"{verb} client.example.com")
        assert (reply.code, reply.xcode) == (421, "4.3.0") and client.session.closed
        assert client.backend.helos == [] and client.session.counts[("smtp_relay_errors", "refused")] == 1


# -- the ID extension ---------------------------------------------------------------------
def test_id_after_ehlo_is_recorded_and_decided_with_never_forwarded():
    client = greeted()
    assert client.say("ID Example.COM") == Reply(250, ("2.1.0 Identity recorded",))
    assert client.say("MAIL FROM:<a@example.com>").code == 250
    (envelope,) = client.decider.envelopes
    assert (envelope.ip, envelope.id, envelope.helo, envelope.sender) == (
        "192.0.2.1", "example.com", "client.example.com", "a@example.com")
    assert client.backend.verbs == ["MAIL"]


@pytest.mark.parametrize("arg", ["", "not a domain", "-bad-.example", "localhost", "192.0.2.1", "x" * 300])
def test_id_with_a_bad_domain_is_501(arg):
    reply = greeted().say(f"ID {arg}".strip())
    assert (reply.code, reply.xcode) == (501, "5.5.4")


def test_id_before_ehlo_after_helo_or_in_a_transaction_is_503():
    assert Client().say("ID example.com").xcode == "5.5.1"
    helo = Client()
    assert helo.say("HELO client.example.com").code == 250
    assert (helo.say("ID example.com").code, helo.say("ID example.com").xcode) == (503, "5.5.1")
    client = greeted()
    client.say("MAIL FROM:<a@example.com>")
    assert (client.say("ID example.com").code, client.session.conn.declared_id) == (503, None)


def test_a_second_id_replaces_the_first_and_rset_keeps_it():
    client = greeted()
    client.say("ID example.net")
    client.say("ID example.com")
    client.say("MAIL FROM:<a@example.com>")
    assert client.say("RSET").code == 250
    client.say("MAIL FROM:<b@example.com>")
    assert [e.id for e in client.decider.envelopes] == ["example.com", "example.com"]
    assert client.backend.verbs == ["MAIL", "RSET", "MAIL"]


def test_ehlo_advertises_id_and_helo_says_nothing_more():
    assert "ID" in Client().say("EHLO c.example").lines
    assert Client().say("HELO c.example").lines == ("door.checkid.test",)


# -- decisions ------------------------------------------------------------------------------
def test_reject_at_mail_answers_checkids_reply_and_the_backend_sees_nothing():
    client = greeted(decider=Decider(REJECTED))
    reply = client.say("MAIL FROM:<a@example.net>")
    assert reply == Reply(550, ("5.7.1 Sending MTA '192.0.2.1' not authorized by 'example.net'",))
    assert client.backend.lines == [] and client.session.state is State.READY
    assert client.say("RCPT TO:<b@example.org>").code == 503


def test_tempfail_at_mail_is_a_4xx_of_checkid():
    reply = greeted(decider=Decider(TEMPFAILED)).say("MAIL FROM:<a@example.com>")
    assert (reply.code, reply.xcode) == (451, "4.4.3")


def test_accept_relays_with_the_decisions_headers_on_top_folded():
    long = Header("Authent:", "192.0.2.1 example.com SPF1 PASS " + " ".join(f"ratings{i}=S1:A" for i in range(12)))
    client = greeted(decider=Decider(replace(ACCEPTED, headers=(AUTHENT, long))))
    replies = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                          + codec.encode_data(MESSAGE))
    assert codes(replies) == [250, 250, 354, 250]
    assert replies[-1] == QUEUED  # the backend's own reply, once it took the final dot
    (message,) = client.backend.messages
    first, second, rest = message.split(b"\r\n", 2)[0], message.split(b"\r\n")[1], message
    assert first == b"Authent: " + AUTHENT.text.encode()
    assert second.startswith(b"Authent: 192.0.2.1")
    head = message[:message.index(b"Subject:")]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert b"\r\n\t" in head  # folded
    assert rest.endswith(codec.dot_stuff(MESSAGE))  # the client's message, stuffed again, after them
    assert client.backend.verbs == ["MAIL", "RCPT", "DATA"]


def test_filter_is_relayed_like_accept_with_its_headers():
    client = greeted(decider=Decider(FILTERED))
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + codec.encode_data(MESSAGE))
    assert client.backend.messages[0].startswith(b"Authent: 192.0.2.1 x SPF1 FAIL\r\nSubject:")


def test_discard_at_mail_answers_250_throughout_and_delivers_nothing():
    client = greeted(decider=Decider(DISCARDED))
    replies = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                          + codec.encode_data(MESSAGE) + b"QUIT\r\n")
    assert codes(replies) == [250, 250, 354, 250, 221]
    assert client.backend.lines == [] and client.backend.messages == []


def test_rcpt_with_own_thresholds_is_decided_before_it_is_forwarded():
    decider = Decider(ACCEPTED, REJECTED, classes={"strict@example.org": "strict"})
    client = greeted(decider=decider)
    client.say("MAIL FROM:<a@example.com>")
    assert client.say("RCPT TO:<b@example.org>").code == 250
    assert client.say("RCPT TO:<strict@example.org>").code == 550
    assert [e.rcpts for e in decider.envelopes] == [(), ("strict@example.org",)]
    assert client.backend.lines == [b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@example.org>\r\n"]
    assert client.session.tx.rcpts == ["b@example.org"]


def test_continue_decides_again_at_end_of_data_with_headers_and_body_then_prepends():
    decider = Decider(CONTINUED, ACCEPTED)
    client = greeted(decider=decider)
    replies = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                          + codec.encode_data(MESSAGE))
    assert codes(replies) == [250, 250, 354, 250]
    last = decider.envelopes[-1]
    assert last.headers == (("Subject", " hello"), ("From", " a@example.com"))  # raw, as DKIM hashes them
    ((headers, sink),) = decider.digests  # asked at the end of the header section
    assert headers == last.headers and last.body is sink
    assert sink.data == b".dot line\r\nbody\r\n"  # the body as it is, not as the wire stuffs it
    assert last.rcpts == ("b@example.org",)
    assert client.backend.messages == [b"Authent: " + AUTHENT.text.encode() + b"\r\n" + codec.dot_stuff(MESSAGE)]


@pytest.mark.parametrize("verdict, code", [(REJECTED, 550), (TEMPFAILED, 451), (DISCARDED, 250)])
def test_refusal_at_end_of_data_aborts_the_backend_without_the_dot(verdict, code):
    client = greeted(decider=Decider(CONTINUED, verdict))
    replies = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                          + codec.encode_data(MESSAGE))
    assert codes(replies)[-1] == code
    assert client.backend.messages == [] and client.backend.aborts == 1
    # the next transaction gets a new backend connection, greeted with the client's name
    client.decider.decisions = [ACCEPTED]
    assert client.say("MAIL FROM:<c@example.com>").code == 250
    assert client.backend.connects == 2 and client.backend.helos == ["client.example.com"] * 2


def test_a_long_message_under_continue_streams_and_the_end_decision_cannot_add_headers():
    client = greeted(decider=Decider(CONTINUED, ACCEPTED), options=SmtpOptions(hold=100))
    big = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" + b"y" * 70 + b"\r\n"
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    client.send(big[:20])
    client.send(big[20:] + b".\r\n")
    assert client.backend.messages == [big]
    assert client.decider.envelopes[-1].body.data == big[len(b"Subject: big\r\n\r\n"):]  # all of it, streamed


def test_backend_refusals_reach_the_client_with_the_backends_code_and_text():
    refusal = Reply(550, ("5.1.1 <nobody@example.org>: Recipient address rejected: User unknown",))
    client = greeted(backend=FakeBackend(replies={"RCPT": refusal, ".": Reply(554, ("5.7.1 no thanks",))}))
    assert client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\n") == [
        Reply(250, ("2.1.0 Ok",)), refusal, Reply(554, ("5.5.1 Error: no valid recipients",))]


def test_the_backends_end_of_data_refusal_is_the_clients():
    client = greeted(backend=FakeBackend(replies={".": Reply(554, ("5.7.1 no thanks",))}))
    replies = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n.\r\n")
    assert replies[-1] == Reply(554, ("5.7.1 no thanks",))


def test_backend_refusing_data_leaves_the_codec_reading_commands():
    client = greeted(backend=FakeBackend(replies={"DATA": Reply(451, ("4.3.0 busy",))}))
    replies = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nRSET\r\n")
    assert codes(replies) == [250, 250, 451, 250] and client.backend.verbs[-1] == "RSET"


def test_backend_lost_mid_session_is_451_for_the_transaction():
    client = greeted(backend=FakeBackend(fail_on="RCPT"))
    client.say("MAIL FROM:<a@example.com>")
    reply = client.say("RCPT TO:<b@example.org>")
    assert (reply.code, reply.xcode) == (451, "4.3.0")
    assert client.session.state is State.READY and not client.session.closed


def test_backend_lost_at_the_final_dot_is_451():
    client = greeted(backend=FakeBackend(fail_on="."))
    replies = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n")
    assert (replies[-1].code, replies[-1].xcode) == (451, "4.3.0")


@pytest.mark.parametrize("wire, reply", [
    (b"x" * 1001 + b"\r\n", 500), (b"\r\n".join([b"y" * 900] * 20) + b"\r\n", 552), (b"a\nb\r\n", 550),
])
def test_content_errors_abort_the_backend_and_refuse_the_message(wire, reply):
    options = SmtpOptions(max_message=10_000, bare_lf="reject")
    client = greeted(options=options)
    replies = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + wire + b".\r\n")
    assert replies[-1].code == reply
    assert client.backend.messages == [] and client.backend.aborts == 1


def test_received_of_our_own_when_the_backend_learns_no_client_address():
    client = greeted(options=SmtpOptions(hostname="door.checkid.test", backend_client="none"))
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + codec.encode_data(MESSAGE))
    message = client.backend.messages[0]
    assert message.startswith(b"Authent: ")
    received = message.split(b"\r\n")[1]
    assert received.startswith(b"Received: from client.example.com ([192.0.2.1]) by door.checkid.test")


def test_no_client_address_relays_without_deciding():
    client = greeted(ip=None)
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + codec.encode_data(MESSAGE))
    assert client.decider.envelopes == [] and client.backend.messages == [codec.dot_stuff(MESSAGE)]


# -- sequence and limits --------------------------------------------------------------------
def test_sequence_errors():
    client = Client()
    assert client.say("MAIL FROM:<a@example.com>") == Reply(503, ("5.5.1 Error: send HELO/EHLO first",))
    client.say("EHLO c.example")
    assert client.say("RCPT TO:<b@example.org>").code == 503
    assert client.say("DATA").code == 503
    client.say("MAIL FROM:<a@example.com>")
    assert client.say("MAIL FROM:<a@example.com>").code == 503
    client.say("RSET")
    assert client.say("MAIL FROM a@example.com").code == 501


def test_syntax_errors_and_unknown_commands():
    client = greeted()
    assert client.say("MAIL TO:<a@example.com>").code == 501
    assert client.say("EHLO").code == 501
    assert client.say("BDAT 10 LAST").code == 502
    assert client.say("STARTTLS").code == 502
    assert client.say("WHATEVER").code == 500
    assert client.backend.lines == []


def test_too_many_errors_end_the_session():
    client = greeted(options=SmtpOptions(max_errors=3))
    replies = client.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert codes(replies) == [500, 500, 421] and client.session.closed


def test_too_many_commands_end_the_session():
    client = greeted(options=SmtpOptions(max_commands=3))
    assert codes(client.send(b"NOOP\r\nNOOP\r\nNOOP\r\n")) == [250, 250, 421]


def test_too_many_recipients_is_452():
    client = greeted(options=SmtpOptions(max_rcpts=2))
    client.say("MAIL FROM:<a@example.com>")
    replies = client.send(b"RCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\n")
    assert codes(replies) == [250, 250, 452] and client.backend.verbs.count("RCPT") == 2


def test_an_overlong_command_line_is_answered_and_the_session_goes_on():
    client = greeted()
    assert codes(client.send(b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n")) == [500, 250]


def test_quit_and_the_null_sender():
    client = greeted()
    assert client.say("MAIL FROM:<>").code == 250 and client.decider.envelopes[0].sender == ""
    assert client.say("QUIT") == Reply(221, ("2.0.0 Bye",))
    assert client.session.closed and client.backend.quits == 1


# -- STARTTLS (RFC 3207) ----------------------------------------------------------------------
TLS = SmtpOptions(hostname="door.checkid.test", starttls=True)


def test_starttls_is_offered_with_a_certificate_and_answered_220():
    client = greeted(options=TLS)
    assert "STARTTLS" in client.say("EHLO client.example.com").lines
    assert client.say("STARTTLS") == Reply(220, ("2.0.0 Ready to start TLS",))
    assert client.session.state is State.TLS
    assert client.backend.lines == []  # STARTTLS is the front door's, never the backend's


def test_after_the_handshake_the_session_starts_over_and_forgets_helo_and_id():
    client = greeted(options=TLS)
    client.say("ID example.com")
    client.say("STARTTLS")
    client.session.tls_started()
    assert client.session.state is State.GREETED
    assert (client.session.conn.helo, client.session.conn.declared_id) == (None, None)
    assert client.say("MAIL FROM:<a@example.com>").code == 503  # EHLO again first
    ehlo = client.say("EHLO other.example.com")
    assert "STARTTLS" not in ehlo.lines and "ID" in ehlo.lines  # not offered twice
    client.say("MAIL FROM:<a@example.com>")
    assert (client.decider.envelopes[-1].helo, client.decider.envelopes[-1].id) == ("other.example.com", None)
    assert client.say("STARTTLS").code == 503  # in a transaction
    client.say("RSET")
    assert (client.say("STARTTLS").code, client.say("STARTTLS").xcode) == (554, "5.5.1")  # TLS already active


def test_the_handshake_keeps_the_limits_counting():
    client = greeted(options=SmtpOptions(max_errors=3, starttls=True))
    client.say("FOO")
    client.say("STARTTLS")
    client.session.tls_started()
    assert codes(client.send(b"BAR\r\nBAZ\r\n")) == [500, 421]  # the error before TLS still counts


def test_starttls_refusals():
    assert greeted().say("STARTTLS").code == 502  # no certificate: not offered
    assert "STARTTLS" not in greeted().say("EHLO c.example").lines
    assert (greeted(options=TLS).say("STARTTLS now").code) == 501
    assert Client(options=TLS).say("STARTTLS").code == 220  # before EHLO is allowed (RFC 3207 §4)


# -- SIZE and counters ------------------------------------------------------------------------
def test_a_declared_size_over_the_limit_is_552_before_the_backend_sees_it():
    client = greeted(options=SmtpOptions(max_message=100_000))
    reply = client.say("MAIL FROM:<a@example.com> SIZE=100001")
    assert (reply.code, reply.xcode) == (552, "5.3.4") and client.backend.lines == []
    assert client.say("MAIL FROM:<a@example.com> SIZE=100000").code == 250


def transactions(client):
    return {k[1]: v for k, v in client.session.counts.items() if k[0] == "smtp_transactions"}


def test_transactions_are_counted_once_by_outcome():
    client = greeted(decider=Decider(ACCEPTED, REJECTED, TEMPFAILED, DISCARDED, ACCEPTED, ACCEPTED))
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + codec.encode_data(MESSAGE))
    client.say("MAIL FROM:<r@example.com>")
    client.say("MAIL FROM:<t@example.com>")
    client.send(b"MAIL FROM:<d@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + codec.encode_data(MESSAGE))
    client.send(b"MAIL FROM:<x@example.com>\r\nRSET\r\n")
    client.send(b"MAIL FROM:<y@example.com>\r\n")
    client.session.lost()  # the client went away in the transaction
    assert transactions(client) == {"relayed": 1, "rejected": 1, "tempfailed": 1, "discarded": 1, "aborted": 2}
    assert client.session.counts[("smtp_sessions",)] == 1
    assert all(name in COUNTERS and len(labels) == len(COUNTERS[name][1]) for name, *labels in client.session.counts)
    relayed = client.session.counts[("smtp_relayed_bytes",)]
    assert relayed == len(client.backend.messages[0])  # headers and stuffed content, as the backend got them


def test_backend_refusals_and_failures_are_counted_by_kind():
    client = greeted(backend=FakeBackend(replies={".": Reply(554, ("5.7.1 no",))}))
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + codec.encode_data(MESSAGE))
    assert transactions(client) == {"rejected": 1}
    lost = greeted(backend=FakeBackend(fail_on="RCPT"))
    lost.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n")
    assert transactions(lost) == {"tempfailed": 1} and lost.session.counts[("smtp_relay_errors", "lost")] == 1
    down = Client(backend=FakeBackend(fail_connect=True))
    assert down.session.counts[("smtp_relay_errors", "connect")] == 1 and not down.session.counts[("smtp_sessions",)]


# -- forged header fields and the body sink ------------------------------------------------------
FORGED = (b"Authentication-Results: mx.checkid.test;\r\n\tspf=pass smtp.mailfrom=example.com\r\n"
          b"Received: from x by y; Tue, 1 Dec 2026 20:00:00 +0000\r\n"
          b"Authentication-Results: other.example; dkim=pass\r\n"
          b"Authent: 192.0.2.1 example.com SPF1 PASS\r\n"
          b"Subject: hello\r\n\r\n"
          b".dot line\r\nAuthent: body text, untouched\r\n")
CLEAN = (b"Received: from x by y; Tue, 1 Dec 2026 20:00:00 +0000\r\n"
         b"Authentication-Results: other.example; dkim=pass\r\n"
         b"Subject: hello\r\n\r\n"
         b".dot line\r\nAuthent: body text, untouched\r\n")
TRANSACTION = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"


@pytest.mark.parametrize("decisions, options, ip, on_top", [
    ((ACCEPTED,), SmtpOptions(), "192.0.2.1", b"Authent: " + AUTHENT.text.encode() + b"\r\n"),  # streams
    ((CONTINUED, ACCEPTED), SmtpOptions(), "192.0.2.1", b"Authent: " + AUTHENT.text.encode() + b"\r\n"),  # held
    ((CONTINUED, ACCEPTED), SmtpOptions(hold=40), "192.0.2.1", b""),  # too long to hold: streams
    ((ACCEPTED,), SmtpOptions(), None, b""),  # no client address: not decided, still filtered
])
def test_forged_fields_never_reach_the_backend_held_or_streamed(decisions, options, ip, on_top):
    client = greeted(decider=Decider(*decisions, forged=forged_authent), options=options, ip=ip)
    wire = TRANSACTION + codec.encode_data(FORGED)
    for i in range(0, len(wire), 17):  # as a client's segments arrive
        client.send(wire[i:i + 17])
    assert client.backend.messages == [on_top + codec.dot_stuff(CLEAN)]
    assert client.session.counts[("forged_headers_removed", "smtp")] == 2
    assert all(name in COUNTERS and len(labels) == len(COUNTERS[name][1]) for name, *labels in client.session.counts)


def test_the_end_of_data_decision_sees_the_message_as_it_came():
    decider = Decider(CONTINUED, ACCEPTED, forged=forged_authent)
    client = greeted(decider=decider)
    client.send(TRANSACTION + codec.encode_data(FORGED))
    last = decider.envelopes[-1]
    assert [name for name, _ in last.headers] == ["Authentication-Results", "Received", "Authentication-Results",
                                                  "Authent", "Subject"]
    assert last.headers[0][1] == " mx.checkid.test;\r\n\tspf=pass smtp.mailfrom=example.com"
    assert last.body.data == b".dot line\r\nAuthent: body text, untouched\r\n"


@given(st.lists(st.integers(min_value=0), max_size=12))
@settings(max_examples=40, deadline=None)
def test_the_sink_gets_exactly_the_body_for_any_split_of_the_input(cuts):
    decider = Decider(CONTINUED, ACCEPTED, forged=forged_authent)
    client = greeted(decider=decider)
    client.send(TRANSACTION)
    for chunk in split(codec.encode_data(FORGED), cuts):
        client.send(chunk)
    ((headers, sink),) = decider.digests
    assert sink.data == FORGED.split(b"\r\n\r\n", 1)[1]  # after the blank line, dot-unstuffed
    assert decider.envelopes[-1].body is sink and len(headers) == 5
    assert client.backend.messages == [b"Authent: " + AUTHENT.text.encode() + b"\r\n" + codec.dot_stuff(CLEAN)]


def test_a_message_of_headers_only_gets_an_empty_sink_and_no_sink_means_an_empty_body():
    decider = Decider(CONTINUED, ACCEPTED)
    greeted(decider=decider).send(TRANSACTION + codec.encode_data(b"Subject: only\r\n"))
    assert decider.digests == [((("Subject", " only"),), decider.envelopes[-1].body)]
    assert decider.envelopes[-1].body.data == b""
    decider = Decider(CONTINUED, ACCEPTED, sinks=False)
    greeted(decider=decider).send(TRANSACTION + codec.encode_data(MESSAGE))
    assert decider.envelopes[-1].body == b"" and decider.envelopes[-1].headers[0] == ("Subject", " hello")
    decider = Decider(ACCEPTED)  # the decision at MAIL stands: no sink is asked for
    greeted(decider=decider).send(TRANSACTION + codec.encode_data(MESSAGE))
    assert decider.digests == []
