"""The milter server: its dispatch and back-pressure with a fake transport, then over a real
socket as an MTA drives it, against in-process decisions."""
from __future__ import annotations

import asyncio

from checkid.config import ListenConfig
from checkid.engine.engine import Engine
from checkid.protocols.base import ServerState
from checkid.protocols.milter import codec
from checkid.protocols.milter.events import (ACCEPT, CONTINUE, Connect, EndOfMessage, HeaderField, Helo,
                                             InsertHeader, Mail, OptNeg, OptNegReply, QuitNoClose, Rcpt, ReplyCode)
from checkid.protocols.milter.server import MAX_QUEUED, MilterProtocol
from checkid.protocols.milter.session import MilterOptions
from checkid.protocols.registry import protocol_factory
from tests.conftest import base_config, run
from tests.protocols.fakes import Decider, connect, until

OPEN = b"".join(codec.encode_command(c) for c in (OptNeg(6, 0x1FF, 0x1FFFFF), Connect("h", "4", 25, "192.0.2.1"),
                                                  Helo("example.com"), Mail(("<a@example.com>",))))


def replies(data):
    parser = codec.ResponseParser()
    parser.receive_data(data)
    out = []
    while (event := parser.next_event()) is not None:
        out.append(event)
    return out


def test_reading_pauses_while_commands_queue_behind_a_pending_decision():
    async def go():
        decider = Decider(hold=True)
        proto = MilterProtocol(decider, ServerState(), MilterOptions())
        transport = connect(proto)
        proto.data_received(OPEN)
        await until(lambda: decider.waiting)  # the decision at MAIL is pending
        headers = b"".join(codec.encode_command(HeaderField(f"X-{i}", "v")) for i in range(5000))
        for start in range(0, len(headers), 65536):  # as a transport delivers them
            if transport.reading:
                proto.data_received(headers[start:start + 65536])
        held = (transport.pauses, transport.reading, proto.in_flight())
        decider.release()
        await until(lambda: not proto.in_flight())
        return held, transport.reading, replies(transport.take())

    (pauses, reading, queued), resumed, answers = run(go())
    assert pauses == 1 and not reading and MAX_QUEUED <= queued < 5000
    assert resumed and len(answers) == 2  # OPTNEG, MAIL: headers get no reply (negotiated)


def test_commands_are_answered_in_order_behind_a_pending_decision():
    async def go():
        decider = Decider(hold=True)
        proto = MilterProtocol(decider, ServerState(), MilterOptions(decide_at="RCPT"))
        transport = connect(proto)
        proto.data_received(OPEN + codec.encode_command(Rcpt(("<b@example.org>",)))
                            + codec.encode_command(Rcpt(("<c@example.org>",))))
        await until(lambda: decider.waiting)
        before = replies(transport.take())
        decider.release()
        await until(lambda: not proto.in_flight())
        return before, replies(transport.take()), len(decider.envelopes)

    before, after, decided = run(go())
    assert [type(r) for r in before] == [OptNegReply, type(CONTINUE)]  # OPTNEG, MAIL; the RCPTs wait
    assert after == [CONTINUE, CONTINUE] and decided == 1


async def serve(dns):
    engine = Engine(base_config(dns))
    factory = protocol_factory(engine, ServerState(), engine.config, ListenConfig("milter", "127.0.0.1:1"))
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class Mta:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.parser = codec.ResponseParser()

    async def send(self, *commands, replies=1):
        self.writer.write(b"".join(codec.encode_command(c) for c in commands))
        out = []
        while len(out) < replies:
            event = self.parser.next_event()
            if event is None:
                data = await self.reader.read(65536)
                if not data:
                    return out
                self.parser.receive_data(data)
                continue
            out.append(event)
        return out


def test_full_sessions_and_quit_nc_reuse_over_a_socket(dns):
    async def go():
        server, port = await serve(dns)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        mta = Mta(reader, writer)
        (neg,) = await mta.send(OptNeg(6, 0x1FF, 0x1FFFFF))
        # CONNECT and HELO are not answered (no-reply bits negotiated): sent with MAIL in one write
        mail = await mta.send(Connect("h", "4", 25, "192.0.2.1"), Helo("example.com"),
                              Mail(("<a@example.com>",)))
        rcpt = await mta.send(Rcpt(("<b@example.org>",)))
        eom = await mta.send(HeaderField("Subject", "x"), EndOfMessage(), replies=2)
        await mta.send(QuitNoClose(), replies=0)
        again = await mta.send(Connect("h2", "4", 25, "192.0.2.1"), Helo("example.net"),
                               Mail(("<a@example.net>",)))
        writer.close()
        await writer.wait_closed()
        server.close()
        return neg, mail, rcpt, eom, again

    neg, mail, rcpt, eom, again = run(go())
    assert neg.version == 6
    assert mail == [CONTINUE] and rcpt == [CONTINUE]
    # HDR_LEADSPC was offered and negotiated: the value carries the space after the colon
    assert eom == [InsertHeader(0, "Authent", " 192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"), ACCEPT]
    assert again == [ReplyCode("550 5.7.1 Sending MTA '192.0.2.1' not authorized by 'example.net'")]


def test_a_malformed_stream_closes_only_that_connection(dns):
    async def go():
        server, port = await serve(dns)
        bad_reader, bad = await asyncio.open_connection("127.0.0.1", port)
        bad.write(b"\x00\x00\x00\x00garbage")
        closed = await bad_reader.read()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        (neg,) = await Mta(reader, writer).send(OptNeg(6, 0x1FF, 0x1FFFFF))
        for w in (bad, writer):
            w.close()
            await w.wait_closed()
        server.close()
        return closed, neg

    closed, neg = run(go())
    assert closed == b"" and isinstance(neg, OptNegReply)


# -- what a connection may hold (issue 14) ----------------------------------------------------
from checkid.protocols.milter.events import Body, Macro  # noqa: E402
from checkid.protocols.milter.server import MAX_QUEUED_BYTES  # noqa: E402


def test_a_flood_of_macros_closes_the_connection_with_a_log_line_and_a_metric(caplog):
    async def go():
        state = ServerState()
        proto = MilterProtocol(Decider(), state, MilterOptions())
        transport = connect(proto)
        proto.data_received(codec.encode_command(OptNeg(6, 0x1FF, 0x1FFFFF)))
        packets = 0
        while not transport.closed and packets < 100_000:  # bounded: the bound is far below
            proto.data_received(codec.encode_command(Macro(b"C", ((f"{{m{packets}}}", "v" * 1000),))))
            packets += 1
        await until(lambda: proto.closed)
        return state, transport, packets, proto.session.conn.macro_bytes

    state, transport, packets, held = run(go())
    assert transport.closed and packets < 1000 and held < 100_000
    assert state.counts[("limits_exceeded", "milter", "macros")] == 1
    assert state.counts[("protocol_errors", "milter")] == 1
    assert "macros" in caplog.text and "closing the milter connection" in caplog.text


def test_body_queued_behind_a_pending_decision_pauses_reading_by_its_bytes_and_is_not_kept():
    async def go():
        decider = Decider(hold=True)
        proto = MilterProtocol(decider, ServerState(), MilterOptions())
        transport = connect(proto)
        proto.data_received(OPEN)
        await until(lambda: decider.waiting)  # the decision at MAIL is pending
        chunk = codec.encode_command(Body(b"x" * 65535))  # Postfix's MILTER_CHUNK_SIZE
        sent = 0
        while transport.reading and sent < 200:  # 200 chunks are 13 MB: far past the bound
            proto.data_received(chunk * 4)  # a 256 KiB read, as uvloop delivers
            sent += 4
        held = sent * len(chunk), proto.in_flight()  # nothing is handled while the decision waits
        decider.release()
        await until(lambda: not proto.in_flight())
        return held, transport.reading, proto.parser.pending_bytes

    (held_bytes, queued), resumed, left = run(go())
    assert held_bytes <= MAX_QUEUED_BYTES + 4 * 65540 and queued < MAX_QUEUED  # a read past the bound
    assert resumed and left == 0  # handled, streamed on (no sink: the decision at MAIL stands), freed


# -- the protocol path (issue 15) -------------------------------------------------------------
from checkid.protocols.milter.events import Data, EndOfHeaders, Quit  # noqa: E402
from tests.protocols.fakes import FakeTransport  # noqa: E402


class CountingTransport(FakeTransport):
    """A fake transport that also counts the writes."""

    def __init__(self, protocol):
        super().__init__(protocol)
        self.writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)


def counting(proto):
    transport = CountingTransport(proto)
    proto.connection_made(transport)
    return transport


def test_the_answers_to_commands_of_one_read_go_out_in_one_write():
    async def go():
        decider = Decider()
        proto = MilterProtocol(decider, ServerState(), MilterOptions())
        transport = counting(proto)
        # no no-reply bits: CONNECT, HELO and MAIL are each answered, from one read
        proto.data_received(codec.encode_command(OptNeg(6, 0x1FF, 0)))
        proto.data_received(b"".join(codec.encode_command(c) for c in (
            Connect("h", "4", 25, "192.0.2.1"), Helo("example.com"), Mail(("<a@example.com>",)),
            Rcpt(("<b@example.org>",)), Data(), HeaderField("Subject", "x"), EndOfHeaders(), EndOfMessage())))
        return transport.writes, replies(transport.take())

    writes, answers = run(go())
    assert writes == 2  # OPTNEG's, then the eight commands' together
    assert [type(a) for a in answers] == [OptNegReply, *[type(CONTINUE)] * 7, InsertHeader, type(ACCEPT)]


def test_a_decision_that_waits_sends_what_was_due_before_it_first():
    async def go():
        decider = Decider(hold=True)
        proto = MilterProtocol(decider, ServerState(), MilterOptions())
        transport = counting(proto)
        proto.data_received(codec.encode_command(OptNeg(6, 0x1FF, 0))
                            + b"".join(codec.encode_command(c) for c in (
                                Connect("h", "4", 25, "192.0.2.1"), Helo("example.com"), Mail(("<a@example.com>",)))))
        await until(lambda: decider.waiting)
        before = replies(transport.take())
        decider.release()
        await until(lambda: not proto.in_flight())
        return before, replies(transport.take())

    before, after = run(go())
    assert [type(a) for a in before] == [OptNegReply, type(CONTINUE), type(CONTINUE)]  # OPTNEG, CONNECT, HELO
    assert after == [CONTINUE]  # MAIL's, once decided


def test_quit_closes_at_once_without_a_half_close():
    async def go():
        proto = MilterProtocol(Decider(), ServerState(), MilterOptions())
        transport = connect(proto)
        proto.data_received(OPEN + codec.encode_command(Quit()) + codec.encode_command(Quit()))
        return transport.closed, transport.eof_written, proto.closed

    closed, half_closed, proto_closed = run(go())
    assert closed and not half_closed and proto_closed
