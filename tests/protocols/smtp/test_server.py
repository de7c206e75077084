"""The front door over real loopback sockets, relaying to a fake MTA written here (an asyncio
SMTP sink that records what it got, strict about end of data as Postfix ≥3.9 is)."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from checkid.config import Config, ListenConfig, SmtpConfig
from checkid.protocols.base import ServerState
from checkid.protocols.registry import protocol_factory
from checkid.protocols.smtp import codec, proxyproto
from checkid.protocols.smtp.relay import ClientAddress, Relay, RelayOptions
from tests.conftest import run
from tests.protocols.fakes import AUTHENT, REJECTED, Decider, until

EHLO_KEYWORDS = ["PIPELINING", "SIZE 10240000", "STARTTLS", "8BITMIME", "CHUNKING", "SMTPUTF8",
                 "XCLIENT NAME ADDR PROTO HELO"]


class Sink(asyncio.Protocol):
    """One backend connection: answers every command, keeps each message as received."""

    def __init__(self, mta: FakeMta) -> None:
        self.mta = mta
        self.buf = bytearray()
        self.in_data = False
        self.lines: list[bytes] = []
        self.closed = False
        self.tls = False
        self.broken_tls = False

    def connection_made(self, transport):
        self.transport = transport
        self.mta.connections.append(self)
        if self.mta.paused:
            transport.pause_reading()
        transport.write(self.mta.banner + b"\r\n")

    def data_received(self, data):
        if self.broken_tls:
            self.transport.write(b"this is not TLS\r\n")
            return
        self.buf += data
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.mta.messages.append(bytes(self.buf[2:end + 2]))  # without the CRLF put in front
                del self.buf[:end + 5]
                self.in_data = False
                self.transport.write(b"250 2.0.0 Ok: queued as ABC123\r\n")
                continue
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self.buf[:end])
            del self.buf[:end + 2]
            self.lines.append(line)
            verb = line.split(b" ")[0].upper()
            if verb in self.mta.silent:
                continue
            if verb == b"EHLO":
                keywords = [k for k in self.mta.keywords if not (self.tls and k == "STARTTLS")]
                self.transport.write(b"".join(b"250-" + k.encode() + b"\r\n" for k in ["mx.fake"] + keywords[:-1])
                                     + b"250 " + keywords[-1].encode() + b"\r\n")
            elif verb == b"STARTTLS" and "STARTTLS" in self.mta.keywords:
                self.transport.write(b"220 2.0.0 Ready to start TLS\r\n")
                self.buf.clear()
                if self.mta.tls is None:  # a broken TLS: the ClientHello meets plaintext
                    self.broken_tls = True
                    return
                self.mta.tasks.add(asyncio.ensure_future(self._handshake()))
                return
            elif verb == b"XCLIENT":
                self.transport.write(b"220 mx.fake ESMTP\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.buf[:0] = b"\r\n"  # so that an empty message's "." is found too
                self.transport.write(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
            else:
                self.transport.write(b"250 2.0.0 Ok\r\n")

    async def _handshake(self):
        loop = asyncio.get_running_loop()
        self.transport = await loop.start_tls(self.transport, self, self.mta.tls, server_side=True)
        self.tls = True

    def connection_lost(self, exc):
        self.closed = True


class FakeMta:
    """``tls``: the server context its STARTTLS uses (None: it answers 220, then plaintext)."""

    def __init__(self, keywords: list[str] | None = None, tls=None, banner: bytes = b"220 mx.fake ESMTP",
                 silent: tuple[bytes, ...] = ()) -> None:
        #: its greeting line, and the verbs it never answers
        self.banner = banner
        self.silent = silent
        self.connections: list[Sink] = []
        self.messages: list[bytes] = []
        self.paused = False
        self.keywords = EHLO_KEYWORDS if keywords is None else keywords
        self.tls = tls
        self.tasks: set[asyncio.Future] = set()

    async def start(self) -> int:
        self.server = await asyncio.get_running_loop().create_server(lambda: Sink(self), "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.close()
        for c in self.connections:
            c.transport.abort()


class Door:
    """A front door listening on loopback in front of ``backend``."""

    def __init__(self, decider, backend_port: int, smtp: SmtpConfig | None = None, **listen):
        self.decider = decider
        self.backend_port = backend_port
        self.listen = listen
        self.state = ServerState()
        self.config = dataclasses.replace(Config(), smtp=smtp or SmtpConfig())

    async def start(self) -> int:
        listen = ListenConfig("smtp", "127.0.0.1:1", backend=f"127.0.0.1:{self.backend_port}", **self.listen)
        factory = protocol_factory(self.decider, self.state, self.config, listen)
        self.server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.state.shutdown(1.0)


class SmtpClient:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.parser = codec.ReplyParser()

    @classmethod
    async def open(cls, port, first: bytes = b""):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if first:
            writer.write(first)
        return cls(reader, writer)

    async def replies(self, n):
        out = []
        while len(out) < n:
            while (r := self.parser.next_event()) is not None:
                out.append(r)
            if len(out) >= n:
                break
            data = await self.reader.read(65536)
            if not data:
                break
            self.parser.receive_data(data)
        return out

    async def send(self, wire: bytes, n: int):
        self.writer.write(wire)
        return await self.replies(n)

    def close(self):
        self.writer.close()


async def stack(decider, mta=None, smtp=None, **listen):
    mta = mta or FakeMta()
    door = Door(decider, await mta.start(), smtp, **listen)
    return mta, door, await door.start()


TRANSACTION = (b"EHLO client.example.com\r\nID example.com\r\nMAIL FROM:<a@example.com>\r\n"
               b"RCPT TO:<b@example.org>\r\nDATA\r\n")
MESSAGE = b"Subject: hi\r\n\r\n.dot\r\nbody\r\n"


def test_accepted_message_is_relayed_live_with_xclient_and_authent_on_top():
    async def go():
        mta, door, port = await stack(Decider())
        client = await SmtpClient.open(port)
        (banner,) = await client.replies(1)
        ehlo, idr, mail, rcpt, data = await client.send(TRANSACTION, 5)  # pipelined: one group
        (done,) = await client.send(codec.encode_data(MESSAGE), 1)
        (bye,) = await client.send(b"QUIT\r\n", 1)
        client.close()
        await door.stop()
        mta.stop()
        return mta, banner, ehlo, (idr, mail, rcpt, data, done, bye)
    mta, banner, ehlo, codes = run(go())
    assert banner.code == 220
    assert "ID" in ehlo.lines and "CHUNKING" not in ehlo.lines and "STARTTLS" not in ehlo.lines
    assert not any(line.startswith("XCLIENT") for line in ehlo.lines)
    assert [r.code for r in codes] == [250, 250, 250, 354, 250, 221]
    assert codes[4].text == "2.0.0 Ok: queued as ABC123"  # the backend's own reply
    (conn,) = mta.connections
    assert conn.lines[0].startswith(b"EHLO ") and conn.lines[1].startswith(b"XCLIENT ")
    assert conn.lines[2:] == [b"EHLO client.example.com", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.org>",
                              b"DATA", b"QUIT"]
    assert not any(line.startswith(b"ID") for line in conn.lines)
    (message,) = mta.messages
    assert message == b"Authent: " + AUTHENT.text.encode() + b"\r\n" + codec.dot_stuff(MESSAGE)


def test_xclient_carries_the_client_address_and_helo():
    async def go():
        mta, door, port = await stack(Decider())
        client = await SmtpClient.open(port)
        await client.replies(1)
        await client.send(b"EHLO client.example.com\r\nQUIT\r\n", 2)
        client.close()
        await door.stop()
        mta.stop()
        return mta.connections[0].lines
    lines = run(go())
    xclient = [line for line in lines if line.startswith(b"XCLIENT")]
    assert xclient and b"ADDR=127.0.0.1" in xclient[-1] and b"HELO=client.example.com" in b" ".join(xclient)
    after = lines[lines.index(xclient[-1]) + 1]
    assert after == b"EHLO client.example.com"



@pytest.mark.parametrize("greeting, proto", [(b"EHLO", b"PROTO=ESMTP"), (b"HELO", b"PROTO=SMTP")])
def test_xclient_proto_says_how_the_client_greeted(greeting, proto):
    """The backend keeps XCLIENT's PROTO (front-door.md §1.2): a HELO client is SMTP."""
    async def go():
        mta, door, port = await stack(Decider())
        client = await SmtpClient.open(port)
        await client.replies(1)
        await client.send(greeting + b" client.example.com\r\nQUIT\r\n", 2)
        client.close()
        await door.stop()
        mta.stop()
        return mta.connections[0].lines
    xclient = b" ".join(line for line in run(go()) if line.startswith(b"XCLIENT"))
    assert proto in xclient

def test_reject_reaches_the_client_and_nothing_reaches_the_backend():
    async def go():
        mta, door, port = await stack(Decider(REJECTED))
        client = await SmtpClient.open(port)
        await client.replies(1)
        out = await client.send(b"EHLO c.example\r\nMAIL FROM:<a@example.net>\r\nQUIT\r\n", 3)
        client.close()
        await door.stop()
        mta.stop()
        return mta, out
    mta, (ehlo, mail, bye) = run(go())
    assert (mail.code, mail.text) == (550, "5.7.1 Sending MTA '192.0.2.1' not authorized by 'example.net'")
    assert mta.messages == [] and not any(line.startswith(b"MAIL") for line in mta.connections[0].lines)


def test_backend_unreachable_is_421():
    async def go():
        mta = FakeMta()
        port = await mta.start()
        mta.stop()  # nothing listens there any more
        door = Door(Decider(), port)
        client = await SmtpClient.open(await door.start())
        out = await client.replies(1)
        tail = await client.reader.read()
        client.close()
        await door.stop()
        return out, tail
    (reply,), tail = run(go())
    assert (reply.code, reply.xcode) == (421, "4.3.0") and tail == b""


def test_backend_refusing_its_greeting_gets_the_client_421_at_ehlo_and_nothing_relayed():
    """The client has the banner at once (the backend greets meanwhile); its EHLO waits for the
    backend's greeting, and a refusal there is 421 4.3.0 and the end, as at the banner."""
    async def go():
        mta, door, port = await stack(Decider(), FakeMta(banner=b"554 5.3.2 not today"))
        client = await SmtpClient.open(port)
        out = await client.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\n", 3)
        tail = await client.reader.read()
        client.close()
        await door.stop()
        mta.stop()
        return mta, door, out, tail
    mta, door, out, tail = run(go())
    assert [(r.code, r.xcode) for r in out] == [(220, ""), (421, "4.3.0")] and tail == b""
    assert door.state.counts[("smtp_relay_errors", "refused")] == 1
    assert not any(line.startswith((b"EHLO", b"MAIL")) for line in mta.connections[0].lines)


def test_without_xclient_the_backend_is_greeted_once_with_the_clients_helo():
    async def go():
        mta, door, port = await stack(Decider(), backend_client="none")
        client = await SmtpClient.open(port)
        await client.replies(1)
        out = await client.send(b"EHLO client.example.com\r\nQUIT\r\n", 2)
        client.close()
        await door.stop()
        mta.stop()
        return mta, out
    mta, out = run(go())
    assert [r.code for r in out] == [250, 221]
    assert mta.connections[0].lines[0] == b"EHLO client.example.com"
    assert sum(line.startswith(b"EHLO") for line in mta.connections[0].lines) == 1


def test_a_backend_silent_past_its_deadline_tempfails_the_message_and_nothing_is_queued():
    async def go():
        mta, door, port = await stack(Decider(), FakeMta(silent=(b"RCPT",)),
                                      smtp=SmtpConfig(backend_timeout=0.05))
        client = await SmtpClient.open(port)
        await client.replies(1)
        out = await client.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n", 3)
        await until(lambda: mta.connections[0].closed, turns=1_000_000)
        client.close()
        await door.stop()
        mta.stop()
        return mta, door, out
    mta, door, out = run(go())
    assert [r.code for r in out] == [250, 250, 451]
    assert door.state.counts[("smtp_relay_errors", "timeout")] == 1 and mta.messages == []


def test_client_gone_mid_data_leaves_nothing_at_the_backend():
    async def go():
        mta, door, port = await stack(Decider())
        client = await SmtpClient.open(port)
        await client.replies(1)
        await client.send(TRANSACTION, 5)
        client.writer.write(b"Subject: half\r\n\r\nsome of the body\r\n")
        await client.writer.drain()
        await until(lambda: mta.connections and mta.connections[0].buf.count(b"half"), turns=100_000)
        client.writer.transport.abort()
        await until(lambda: mta.connections[0].closed, turns=100_000)
        await door.stop()
        mta.stop()
        return mta
    mta = run(go())
    assert mta.messages == []


def test_smuggling_never_makes_a_second_message_at_the_backend():
    async def go():
        mta, door, port = await stack(Decider())
        client = await SmtpClient.open(port)
        await client.replies(1)
        await client.send(TRANSACTION, 5)
        smuggled = (b"Subject: one\r\n\r\nbody\n.\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<x@example.org>\r\n"
                    b"DATA\r\nSubject: two\r\n\r\nx\r.\r\n.\r\n")
        out = await client.send(smuggled + b"QUIT\r\n", 2)
        client.close()
        await door.stop()
        mta.stop()
        return mta, out
    mta, out = run(go())
    assert [r.code for r in out] == [250, 221]
    (message,) = mta.messages
    assert b"evil@example.com" in message  # content, not a command
    assert [line for line in mta.connections[0].lines if line.startswith(b"MAIL")] == [b"MAIL FROM:<a@example.com>"]


def test_data_split_at_every_byte_arrives_whole():
    async def go():
        mta, door, port = await stack(Decider())
        client = await SmtpClient.open(port)
        await client.replies(1)
        await client.send(TRANSACTION, 5)
        for i, byte in enumerate(codec.encode_data(MESSAGE)):
            client.writer.write(bytes([byte]))
            if i % 7 == 0:
                await client.writer.drain()
        (done,) = await client.replies(1)
        client.close()
        await door.stop()
        mta.stop()
        return mta, done
    mta, done = run(go())
    assert done.code == 250 and mta.messages[0].endswith(codec.dot_stuff(MESSAGE))


def test_content_reaches_the_backend_as_it_arrives_before_the_final_dot():
    """Content is written in one piece per read, not held back for the final dot."""
    async def go():
        mta, door, port = await stack(Decider())
        client = await SmtpClient.open(port)
        await client.replies(1)
        await client.send(TRANSACTION, 5)
        part = b"Subject: streamed\r\n\r\n" + (b"y" * 70 + b"\r\n") * 100
        client.writer.write(part)
        conn = mta.connections[0]
        await until(lambda: conn.buf.endswith(part), turns=100_000)
        (done,) = await client.send(b".\r\n", 1)
        client.close()
        await door.stop()
        mta.stop()
        return mta, done, part
    mta, done, part = run(go())
    assert done.code == 250 and mta.messages[0].endswith(part)


def test_a_slow_backend_slows_the_client_and_the_message_still_arrives_whole():
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 8000  # 8 MB

    async def go():
        mta = FakeMta()
        mta.paused = True  # the backend reads nothing until told
        mta, door, port = await stack(Decider(), mta)
        client = await SmtpClient.open(port)
        await client.replies(1)
        await client.send(TRANSACTION.replace(b"DATA\r\n", b""), 4)
        mta.connections[0].transport.resume_reading()
        await client.send(b"DATA\r\n", 1)
        mta.connections[0].transport.pause_reading()
        client.writer.write(codec.encode_data(big))
        (connection,) = door.state.connections
        await until(lambda: connection.relay.paused, turns=1_000_000)
        assert not connection.transport.is_reading()
        mta.connections[0].transport.resume_reading()
        (done,) = await client.replies(1)
        client.close()
        await door.stop()
        mta.stop()
        return mta, done
    mta, done = run(go())
    assert done.code == 250 and mta.messages[0].endswith(codec.dot_stuff(big))


def test_inbound_proxy_v2_gives_the_client_address():
    async def go():
        decider = Decider()
        mta, door, port = await stack(decider, proxy_protocol=True, proxy_hosts=("127.0.0.0/8",))
        header = proxyproto.encode_v2("198.51.100.7", 40000, "127.0.0.1", 25)
        client = await SmtpClient.open(port, header)
        (banner,) = await client.replies(1)
        await client.send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nQUIT\r\n", 3)
        client.close()
        await door.stop()
        mta.stop()
        return decider, mta, banner
    decider, mta, banner = run(go())
    assert banner.code == 220
    assert decider.envelopes[0].ip == "198.51.100.7"
    assert any(b"ADDR=198.51.100.7" in line for line in mta.connections[0].lines)


def test_inbound_proxy_from_elsewhere_is_refused_without_a_banner():
    async def go():
        mta, door, port = await stack(Decider(), proxy_protocol=True, proxy_hosts=("192.0.2.0/24",))
        client = await SmtpClient.open(port, proxyproto.encode_v2("198.51.100.7", 40000, "127.0.0.1", 25))
        data = await client.reader.read()
        client.close()
        await door.stop()
        mta.stop()
        return data, mta
    data, mta = run(go())
    assert data == b"" and mta.connections == []


@pytest.mark.parametrize("client", [
    ClientAddress("2001:db8::7", 40000, "2001:db8::25", 25),  # an IPv6 client behind an IPv4 hop
    None,  # a unix-socket client: no address, still one header (LOCAL)
])
def test_relay_sends_one_proxy_header_of_the_clients_own_family_or_local(client):
    async def go():
        got = bytearray()
        arrived = asyncio.Event()

        async def backend(reader, writer):
            got.extend(await reader.read(4096))
            arrived.set()
            writer.close()

        server = await asyncio.start_server(backend, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        relay = Relay(RelayOptions(target=("tcp", "127.0.0.1", port), backend_client="proxy"), client)
        await relay.open()
        await asyncio.wait_for(arrived.wait(), 30)
        relay.abort()
        server.close()
        parser = proxyproto.ProxyParser()
        parser.receive_data(bytes(got))
        return parser.header

    header = run(go())
    if client is None:
        assert header.command == "LOCAL"
    else:
        assert (header.command, header.src_addr, header.dst_addr) == ("PROXY", client.ip, client.local_ip)
