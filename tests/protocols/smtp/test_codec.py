"""The front door's codec: command lines, DATA (unstuffing, limits, bare CR/LF, smuggling),
the backend's replies; any bytes split anywhere."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.errors import ProtocolError
from checkid.protocols.smtp import codec
from checkid.protocols.smtp.events import BadLine, Command, DataChunk, DataError, EndOfData, Reply
from tests.conftest import split


def events(chunks, parser=None, accept_data=True):
    """Every event of ``chunks``; a DATA command is answered 354 (or refused)."""
    parser = parser or codec.CommandParser()
    out = []
    for chunk in chunks:
        parser.receive_data(chunk)
        while True:
            event = parser.next_event()
            if event is None:
                if parser.mode is codec.Mode.WAIT:
                    if parser.waiting == "STARTTLS":
                        parser.resume()  # STARTTLS refused; its own tests are below
                    else:
                        parser.start_data() if accept_data else parser.resume()
                    continue
                break
            out.append(event)
    return out


def merged(evs):
    """Adjacent content chunks joined: how a stream was cut must not matter beyond that."""
    out = []
    for e in evs:
        if isinstance(e, DataChunk) and out and isinstance(out[-1], DataChunk):
            out[-1] = DataChunk(out[-1].data + e.data)
        else:
            out.append(e)
    return out


def test_pipelined_commands_then_content_then_quit():
    wire = (b"EHLO client.example\r\nMAIL FROM:<a@example.com> SIZE=10\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
            b"Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\nquit\r\n")
    assert merged(events([wire])) == [
        Command("EHLO", "client.example"), Command("MAIL", "FROM:<a@example.com> SIZE=10"),
        Command("RCPT", "TO:<b@example.org>"), Command("DATA"),
        DataChunk(b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"), EndOfData(), Command("QUIT"),
    ]


def test_nothing_after_data_until_the_session_answers_it():
    parser = codec.CommandParser()
    parser.receive_data(b"DATA\r\nRSET\r\n")
    assert parser.next_event() == Command("DATA")
    assert parser.next_event() is None and parser.mode is codec.Mode.WAIT
    parser.resume()  # refused: RSET is a command, not content
    assert parser.next_event() == Command("RSET")
    with pytest.raises(ProtocolError):
        parser.start_data()


def test_command_line_bound_is_512_with_crlf():
    ok = b"NOOP " + b"x" * (codec.MAX_COMMAND_LINE - 7) + b"\r\n"
    assert len(ok) == 512
    too_long = b"NOOP " + b"x" * (codec.MAX_COMMAND_LINE - 6) + b"\r\n"
    assert events([ok, too_long, b"QUIT\r\n"]) == [Command("NOOP", "x" * 505), BadLine("too long"), Command("QUIT")]


def test_an_endless_command_line_is_dropped_as_it_comes():
    parser = codec.CommandParser()
    out = events([b"x" * 600], parser)
    out += events([b"y" * 10_000], parser)
    assert parser.buffered == 0
    assert out + events([b"z\r\nQUIT\r\n"], parser) == [BadLine("too long"), Command("QUIT")]


def test_bare_lf_in_commands_per_policy():
    assert events([b"HELO a\nQUIT\r\n"]) == [Command("HELO", "a"), Command("QUIT")]
    strict = codec.CommandParser(bare_lf="reject")
    assert events([b"HELO a\nQUIT\r\n"], strict) == [BadLine("bare LF"), Command("QUIT")]


@pytest.mark.parametrize("attempt", [
    b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n .\r\n",
])
def test_smuggled_end_of_data_is_content_when_normalizing(attempt):
    wire = b"DATA\r\nfirst" + attempt + b"MAIL FROM:<evil@example.com>\r\n"
    out = merged(events([wire]))
    assert EndOfData() not in out
    content = out[1].data
    assert b"MAIL FROM:<evil@example.com>\r\n" in content
    # what the relay writes can never end the message early at the backend
    assert b"\r\n.\r\n" not in b"\r\n" + codec.dot_stuff(content)


@pytest.mark.parametrize("attempt", [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n"])
def test_smuggled_end_of_data_is_refused_when_rejecting(attempt):
    wire = b"DATA\r\nfirst" + attempt + b"MAIL FROM:<evil@example.com>\r\n.\r\nQUIT\r\n"
    out = merged(events([wire], codec.CommandParser(bare_lf="reject")))
    assert [e for e in out if not isinstance(e, DataChunk)] == [Command("DATA"), DataError("bare CR or LF"),
                                                               EndOfData(), Command("QUIT")]
    assert all(b"evil" not in e.data for e in out if isinstance(e, DataChunk))


def test_bare_cr_and_lf_become_crlf_when_normalizing():
    out = merged(events([b"DATA\r\na\nb\rc\r\r\n.\r\n"]))
    assert out == [Command("DATA"), DataChunk(b"a\r\nb\r\nc\r\n\r\n"), EndOfData()]


def test_text_line_bound_is_1000_with_crlf():
    ok = b"x" * 998 + b"\r\n"
    out = merged(events([b"DATA\r\n" + ok + b"y" * 999 + b"\r\nmore\r\n.\r\nNOOP\r\n"]))
    assert out == [Command("DATA"), DataChunk(ok), DataError("line too long"), EndOfData(), Command("NOOP")]


def test_an_endless_content_line_is_not_kept():
    parser = codec.CommandParser()
    events([b"DATA\r\n"], parser)
    for _ in range(100):
        events([b"z" * 10_000], parser)
    assert parser.buffered < codec.MAX_TEXT_LINE
    assert merged(events([b"\r\n.\r\n"], parser)) == [DataError("line too long"), EndOfData()]


def test_message_size_bound():
    parser = codec.CommandParser(max_size=20)
    out = merged(events([b"DATA\r\n" + b"0123456789\r\n" * 3 + b".\r\n"], parser))
    assert out == [Command("DATA"), DataChunk(b"0123456789\r\n"), DataError("message too big"), EndOfData()]


def test_a_message_may_be_empty_and_end_at_once():
    assert events([b"DATA\r\n.\r\n"]) == [Command("DATA"), EndOfData()]


def test_starttls_waits_and_a_220_drops_what_was_pipelined_behind_it():
    parser = codec.CommandParser()
    parser.receive_data(b"EHLO c.example\r\nSTARTTLS\r\nMAIL FROM:<evil@example.com>\r\nRSET\r\n")
    assert [parser.next_event(), parser.next_event()] == [Command("EHLO", "c.example"), Command("STARTTLS")]
    assert parser.next_event() is None and (parser.mode, parser.waiting) == (codec.Mode.WAIT, "STARTTLS")
    assert parser.start_tls() == len(b"MAIL FROM:<evil@example.com>\r\nRSET\r\n")  # CVE-2011-0411
    assert parser.next_event() is None and parser.buffered == 0
    parser.receive_data(b"EHLO c.example\r\n")  # through TLS now
    assert parser.next_event() == Command("EHLO", "c.example")


def test_a_refused_starttls_reads_what_follows_as_commands():
    parser = codec.CommandParser()
    parser.receive_data(b"STARTTLS\r\nQUIT\r\n")
    assert parser.next_event() == Command("STARTTLS") and parser.next_event() is None
    parser.resume()
    assert parser.next_event() == Command("QUIT")


def test_answers_must_match_the_command_that_waits():
    parser = codec.CommandParser()
    parser.receive_data(b"STARTTLS\r\n")
    parser.next_event()
    with pytest.raises(ProtocolError, match="DATA answered"):
        parser.start_data()  # a 354 to STARTTLS would read the handshake as a message
    parser.resume()
    parser.receive_data(b"DATA\r\n")
    parser.next_event()
    with pytest.raises(ProtocolError, match="STARTTLS answered"):
        parser.start_tls()


# -- properties ---------------------------------------------------------------------------
line_text = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
contents = st.lists(st.one_of(line_text, st.sampled_from([b".", b"..", b".x", b""])), max_size=20).map(
    lambda lines: b"".join(line + b"\r\n" for line in lines))
nasty = st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.\r\n"]), max_size=40).map(b"".join)


@given(contents, st.lists(st.integers(0, 2000), max_size=8))
def test_dot_stuffing_round_trip_split_anywhere(content, cuts):
    wire = b"DATA\r\n" + codec.encode_data(content) + b"QUIT\r\n"
    out = merged(events(split(wire, cuts)))
    assert out == [Command("DATA")] + ([DataChunk(content)] if content else []) + [EndOfData(), Command("QUIT")]


@given(nasty, st.lists(st.integers(0, 500), max_size=8), st.sampled_from(["normalize", "reject"]))
def test_any_stream_split_anywhere_gives_the_same_events(wire, cuts, policy):
    whole = merged(events([b"DATA\r\n" + wire], codec.CommandParser(bare_lf=policy)))
    pieces = merged(events(split(b"DATA\r\n" + wire, cuts), codec.CommandParser(bare_lf=policy)))
    assert pieces == whole


@given(nasty)
def test_relayed_content_never_holds_an_end_of_data(wire):
    out = merged(events([b"DATA\r\n" + wire]))
    for event in out:
        if isinstance(event, DataChunk):
            assert b"\r\n.\r\n" not in b"\r\n" + codec.dot_stuff(event.data)
    ends = out.count(EndOfData())
    # only a real <CRLF>.<CRLF> (or a "." line right after DATA) ends the message
    assert ends <= 1
    if ends:
        assert b"\r\n.\r\n" in b"\r\n" + wire


# -- replies ------------------------------------------------------------------------------
def replies(chunks):
    parser = codec.ReplyParser()
    out = []
    for chunk in chunks:
        parser.receive_data(chunk)
        while (r := parser.next_event()) is not None:
            out.append(r)
    return out


def test_golden_postfix_ehlo_reply_and_queue_reply():
    wire = (b"250-mx.checkid.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-XCLIENT NAME ADDR PROTO HELO\r\n"
            b"250 SMTPUTF8\r\n250 2.0.0 Ok: queued as 4ABCD\r\n")
    ehlo, queued = replies([wire])
    assert ehlo == Reply(250, ("mx.checkid.test", "PIPELINING", "SIZE 10240000", "XCLIENT NAME ADDR PROTO HELO",
                               "SMTPUTF8"))
    assert (queued.code, queued.xcode, queued.text) == (250, "2.0.0", "2.0.0 Ok: queued as 4ABCD")


@pytest.mark.parametrize("wire, message", [
    (b"25\r\n", "malformed"), (b"abc hello\r\n", "malformed"), (b"250-a\r\n251 b\r\n", "changed"),
    (b"250x\r\n", "malformed"), (b"250-x\r\n" * 101, "lines"), (b"2" * 3000, "longer"),
    (b"650 nope\r\n", "malformed"),
])
def test_malformed_replies_are_protocol_errors(wire, message):
    with pytest.raises(ProtocolError, match=message):
        replies([wire])


reply_lines = st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=50), min_size=1,
                       max_size=5).map(tuple)


@given(st.lists(st.builds(Reply, st.integers(200, 599), reply_lines), max_size=4),
       st.lists(st.integers(0, 1000), max_size=6))
def test_replies_round_trip_split_anywhere(rs, cuts):
    wire = b"".join(codec.encode_reply(r) for r in rs)
    assert replies(split(wire, cuts)) == rs


def test_reply_encoder_keeps_lines_whole_and_short():
    wire = codec.encode_reply(Reply(550, ("5.7.1 two\r\nlines", "x" * 600)))
    assert wire.count(b"\r\n") == 2
    assert all(len(line) + 2 <= 512 for line in wire.split(b"\r\n"))
    with pytest.raises(ValueError):
        codec.encode_command("MAIL", "FROM:<a@b>\r\nRCPT TO:<c@d>")


command_lines = st.lists(st.sampled_from([b"EHLO c.example", b"NOOP", b"MAIL FROM:<a@example.com>", b"RSET",
                                          b"X" * 600, b"ID example.com"]), max_size=6)


@given(command_lines, st.binary(max_size=200), st.lists(st.integers(0, 2000), max_size=8))
def test_nothing_pipelined_after_starttls_ever_comes_out_split_anywhere(before, after, cuts):
    wire = b"".join(line + b"\r\n" for line in before) + b"STARTTLS\r\n" + after
    whole = codec.CommandParser()
    whole.receive_data(wire)
    expected = []
    while (event := whole.next_event()) is not None:
        expected.append(event)
    parser, out = codec.CommandParser(), []
    for chunk in split(wire, cuts):  # all of it arrives before the 220 goes out
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not None:
            out.append(event)
    assert out == expected and out[-1] == Command("STARTTLS")
    parser.start_tls()
    assert parser.next_event() is None and parser.buffered == 0
    parser.receive_data(b"NOOP\r\n")
    assert parser.next_event() == Command("NOOP")


@pytest.mark.parametrize("attempt", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r"])
def test_a_lone_dot_that_does_not_end_the_data_stays_a_dot(attempt):
    """RFC 5321 §4.5.2: the leading dot is removed only when other characters follow it; a
    false end of data (bare CR or LF beside it) is content, with its dot (found against a real
    Postfix behind the front door)."""
    out = merged(events([b"DATA\r\nfirst" + attempt + b"second\r\n.\r\n"]))
    assert out == [Command("DATA"), DataChunk(b"first\r\n.\r\nsecond\r\n"), EndOfData()]
