"""The milter server over a real socket, as an MTA drives it, against in-process decisions."""
from __future__ import annotations

import asyncio

from checkid.config import ListenConfig
from checkid.engine.engine import Engine
from checkid.protocols.registry import protocol_factory
from checkid.protocols.milter import codec
from checkid.protocols.milter.events import (ACCEPT, CONTINUE, Connect, EndOfMessage, Header, Helo,
                                             InsertHeader, Mail, OptNeg, OptNegReply, QuitNoClose, Rcpt, ReplyCode)
from tests.conftest import base_config, run


async def serve(dns):
    engine = Engine(base_config(dns))
    factory = protocol_factory(engine, engine.config, ListenConfig("milter", "127.0.0.1:1"))
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
        eom = await mta.send(Header("Subject", "x"), EndOfMessage(), replies=2)
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
    assert eom == [InsertHeader(0, "Authent", "192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"), ACCEPT]
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
