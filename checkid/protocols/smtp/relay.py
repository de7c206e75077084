"""The relay client: one asyncio connection to the backend MTA per client session (XCLIENT
and PROXY both forbid reuse, reference/front-door.md §1.2-1.3), the
:class:`~checkid.protocols.smtp.session.Backend` the session talks to.

It reads the banner, sends EHLO (only when XCLIENT or STARTTLS to the backend needs its keywords first),
and tells the backend who the client is: a PROXY v2 header
before anything else (``backend_client = "proxy"``), or XCLIENT once the client's HELO name
is known and the backend offers it, then EHLO again (``"xclient"``). Replies are parsed by
:class:`~checkid.protocols.smtp.codec.ReplyParser`; each wait has a deadline (RFC 5321
§4.5.3.2: 5 minutes per command, 10 for the end of data; smaller by configuration). When
its write buffer is high the relay says so (``on_pause``), and the server stops reading the
client: a slow backend slows the client, memory stays bounded.

With ``tls`` set (``[smtp] backend_tls``), the relay asks for STARTTLS when the backend's EHLO
offers it, then EHLOs again over TLS (RFC 3207 §4.2: the backend forgets the first EHLO), and
takes nothing the backend sent in plaintext after its 220. ``required`` refuses to relay
without TLS; ``opportunistic`` connects again in plaintext when the handshake fails. The
backend's certificate is not verified: encryption on the way to the MTA, as Postfix's
``may``/``encrypt`` levels give.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from checkid.errors import ProtocolError
from checkid.protocols.smtp import proxyproto, xclient
from checkid.protocols.smtp.codec import ReplyParser, encode_command
from checkid.protocols.smtp.events import Reply
from checkid.protocols.smtp.backend import BackendClient, BackendError

log = logging.getLogger(__name__)

#: what is asked of the backend's transport: pause above this, resume below a quarter
WRITE_HIGH = 256 * 1024
#: replies nobody asked for yet (the banner) kept for the next to ask; more is a broken backend
MAX_EARLY = 4


@dataclass(frozen=True, slots=True)
class RelayOptions:
    #: ("tcp", host, port) or ("unix", path, 0)
    target: tuple[str, str, int]
    #: the name sent in the first EHLO
    hostname: str = "localhost"
    backend_client: BackendClient = "xclient"
    #: connect and per-command deadline (RFC 5321 §4.5.3.2 allows 5 minutes)
    timeout: float = 100.0
    #: deadline for the reply to the final dot (RFC 5321 §4.5.3.2.6: 10 minutes)
    data_timeout: float = 300.0
    #: STARTTLS to the backend: never, when offered, or always
    tls: Literal["no", "opportunistic", "required"] = "no"
    #: the client context for it (None: :func:`backend_tls_context`)
    tls_context: ssl.SSLContext | None = None


def backend_tls_context() -> ssl.SSLContext:
    """TLS for the relay: encrypted, the certificate not checked (a loopback or private-link
    MTA has a self-signed one, and its address is configured, not looked up)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """Where the client came from and where it connected to (for PROXY and XCLIENT)."""

    ip: str
    port: int
    local_ip: str
    local_port: int


class _Link(asyncio.Protocol):
    """The socket's side: bytes to replies, one waiter per expected reply, in order."""

    def __init__(self, on_pause: Callable[[bool], None]) -> None:
        self.parser = ReplyParser()
        self.waiters: deque[asyncio.Future[Reply]] = deque()
        self.early: deque[Reply] = deque()
        self.on_pause = on_pause
        self.transport: asyncio.Transport | None = None
        self.lost = False
        #: the next reply answers STARTTLS; after a 220 nothing more is read in plaintext
        self.tls_next = False
        self.dropping = False
        #: the latest reply asked for is due by this (loop time); one timer per connection
        #: checks it, re-armed when it fires early, instead of a timer per command
        self.deadline = 0.0
        self.timeout = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        tcp.set_write_buffer_limits(high=WRITE_HIGH)
        self.transport = tcp

    def data_received(self, data: bytes) -> None:
        if self.dropping:
            return  # after the 220 to STARTTLS, before the handshake: never read as if through TLS
        start = 0
        while self.tls_next and (end := data.find(b"\n", start)) >= 0:
            self._receive(data[start:end + 1])  # line by line, to stop right after the reply
            start = end + 1
        if not self.dropping and start < len(data):
            self._receive(data[start:] if start else data)

    def _receive(self, data: bytes) -> None:
        try:
            self.parser.receive_data(data)
        except ProtocolError as e:
            return self._fail(BackendError(f"backend broke the protocol: {e}", "protocol"))
        while not self.dropping and (reply := self.parser.next_event()) is not None:
            if self.tls_next:
                self.tls_next = False
                self.dropping = reply.code == 220
            if not self.waiters:
                # the banner before anyone asks, or a 421 before closing: the next to ask takes it
                if len(self.early) >= MAX_EARLY:
                    return self._fail(BackendError(f"backend sent unasked replies ({reply.code} {reply.text})",
                                                   "protocol"))
                self.early.append(reply)
                continue
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.disarm()
        self._fail(BackendError(f"backend connection lost{f': {exc}' if exc else ''}"), close=False)
        self.on_pause(False)

    def pause_writing(self) -> None:
        self.on_pause(True)

    def resume_writing(self) -> None:
        self.on_pause(False)

    def expect(self) -> asyncio.Future[Reply]:
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if self.early and not self.waiters:
            waiter.set_result(self.early.popleft())
        elif self.lost:
            waiter.set_exception(BackendError("backend connection lost"))
        else:
            self.waiters.append(waiter)
        return waiter

    def arm(self, timeout: float) -> None:
        """The reply just asked for is due within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        self.deadline, self.timeout = loop.time() + timeout, timeout
        if self.timer is None:
            self.timer = loop.call_at(self.deadline, self._expire)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        if self.lost or not any(not w.done() for w in self.waiters):
            return  # answered meanwhile; the next wait arms again
        loop = asyncio.get_running_loop()
        if loop.time() < self.deadline:
            self.timer = loop.call_at(self.deadline, self._expire)
            return
        self._fail(BackendError(f"backend did not answer within {self.timeout:g} s", "timeout"))

    def _fail(self, error: BackendError, close: bool = True) -> None:
        self.lost = True
        self.disarm()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if close and self.transport is not None:
            self.transport.abort()


class Relay:
    """The backend of one client session."""

    def __init__(self, options: RelayOptions, client: ClientAddress | None,
                 on_pause: Callable[[bool], None] = lambda paused: None,
                 counts: Counter[tuple[str, ...]] | None = None) -> None:
        self.options = options
        #: ("smtp_tls_handshakes", "backend", result) goes here
        self.counts: Counter[tuple[str, ...]] = Counter() if counts is None else counts
        self.client = client
        self.on_pause = on_pause
        self.extensions: dict[str, str] = {}
        self.paused = False
        self._link: _Link | None = None
        self._xclient_done = False
        #: the banner, EHLO and STARTTLS after :meth:`open`, while the client reads our banner
        self._greeting: asyncio.Task[None] | None = None
        #: content not yet written: it goes with the next command (the final dot) or at
        #: :meth:`flush`, one write instead of one per chunk
        self._pending: list[bytes] = []

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.lost

    def _paused(self, paused: bool) -> None:
        if paused != self.paused:
            self.paused = paused
            self.on_pause(paused)

    async def connect(self) -> None:
        await self.open()
        await self.ready()

    async def open(self) -> None:
        """The TCP (or unix) connection; the backend's greeting goes on in a task of its own,
        for :meth:`ready` (the client's turn to read our banner and answer overlaps it)."""
        self.abort()
        link = await self._open_link()
        greeting = asyncio.ensure_future(self._greet(link))
        greeting.add_done_callback(_retrieved)
        self._greeting = greeting

    async def ready(self) -> None:
        """Wait for the greeting :meth:`open` began. :raises BackendError:"""
        greeting, self._greeting = self._greeting, None
        if greeting is not None:
            await greeting
        self._live()

    async def _greet(self, link: _Link) -> None:
        try:
            await self._handshake(link, self.options.tls != "no")
        except BackendError as e:
            if e.kind != "tls" or self.options.tls != "opportunistic":
                raise
            log.warning("%s; relaying in plaintext", e)
            await self._handshake(await self._open_link(), False)

    async def _open_link(self) -> _Link:
        self._drop()
        self._xclient_done = False
        loop = asyncio.get_running_loop()
        kind, host, port = self.options.target
        link = _Link(self._paused)
        # wait_for, not asyncio.timeout: the first step of a session runs outside a task
        # (checkid.protocols.eager)
        try:
            if kind == "unix":
                await asyncio.wait_for(loop.create_unix_connection(lambda: link, host), self.options.timeout)
            else:
                await asyncio.wait_for(loop.create_connection(lambda: link, host, port), self.options.timeout)
        except (OSError, TimeoutError) as e:
            raise BackendError(f"cannot connect to {host}{f':{port}' if port else ''}: {e or 'timeout'}",
                               "connect") from None
        self._link = link
        if self.options.backend_client == "proxy":
            # one header on every connection (haproxy proxy-protocol.txt): LOCAL when the client
            # has no address (a unix socket), so the backend still gets the header it waits for
            c = self.client
            self._write(proxyproto.encode_v2(c.ip, c.port, c.local_ip, c.local_port) if c is not None
                        else proxyproto.encode_v2_local())
        return link

    async def _handshake(self, link: _Link, tls: bool) -> None:
        banner = await self._wait(link, link.expect(), self.options.timeout)
        if banner.code != 220:
            self.abort()
            raise BackendError(f"backend greeted with {banner.code} {banner.text}", "refused")
        if tls or self.options.backend_client == "xclient":
            # its keywords say whether XCLIENT and STARTTLS are there; otherwise nothing needs
            # them before the client's own EHLO, which :meth:`hello` sends (a round trip less)
            await self._first_ehlo()
        if tls:
            await self._starttls(link)

    async def _first_ehlo(self) -> None:
        reply = await self._ehlo(self.options.hostname)
        if not reply.positive:
            self.abort()
            raise BackendError(f"backend refused EHLO: {reply.code} {reply.text}", "refused")

    async def _starttls(self, link: _Link) -> None:
        if "STARTTLS" not in self.extensions:
            if self.options.tls == "required":
                self.abort()
                raise BackendError("backend does not offer STARTTLS (backend_tls = \"required\")", "tls")
            return
        link.tls_next = True
        reply = await self.command(encode_command("STARTTLS"))
        if reply.code != 220:
            if self.options.tls == "required":
                self.abort()
                raise BackendError(f"backend refused STARTTLS: {reply.code} {reply.text}", "tls")
            return  # still a plaintext session, as before the command
        assert link.transport is not None
        # what the backend sent after its 220 came in plaintext: never read as if through TLS
        link.parser, link.early, link.dropping = ReplyParser(), deque(), False
        context = self.options.tls_context or backend_tls_context()
        try:
            transport = await asyncio.get_running_loop().start_tls(
                link.transport, link, context, server_side=False, ssl_handshake_timeout=self.options.timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            transport, error = None, str(e) or "timeout"
        else:
            error = "connection lost"
        if transport is None:
            self.counts[("smtp_tls_handshakes", "backend", "failed")] += 1
            self.abort()
            raise BackendError(f"TLS handshake with the backend failed: {error}", "tls")
        self.counts[("smtp_tls_handshakes", "backend", "ok")] += 1
        link.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        await self._first_ehlo()

    async def hello(self, helo: str, esmtp: bool = True) -> Reply:
        if (self.options.backend_client == "xclient" and not self._xclient_done and self.client is not None
                and "XCLIENT" in self.extensions):
            self._xclient_done = True  # once: after ADDR the backend no longer takes XCLIENT from us
            attrs = {"ADDR": self.client.ip, "HELO": helo, "NAME": xclient.UNAVAILABLE,
                     "PROTO": "ESMTP" if esmtp else "SMTP"}  # kept by the backend: say how the client greeted
            for line in xclient.xclient_commands(attrs, xclient.offered_attributes(self.extensions)):
                reply = await self.command(line)
                if reply.code != 220:  # carry on without it, as Haraka does
                    log.warning("backend refused XCLIENT: %s %s", reply.code, reply.text)
                    break
        return await self._ehlo(helo)

    async def _ehlo(self, name: str) -> Reply:
        reply = await self.command(encode_command("EHLO", name))
        if reply.positive:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                self.extensions[keyword.upper()] = params.strip()
        return reply

    async def command(self, line: bytes) -> Reply:
        link = self._live()
        waiter = link.expect()
        self._write(line)
        return await self._wait(link, waiter, self.options.timeout)

    def send(self, data: bytes) -> None:
        self._live()
        self._pending.append(data)

    def flush(self) -> None:
        """Write the content :meth:`send` kept (the server calls it when it has read all it can)."""
        if self._pending and self.connected:
            self._write(b"")

    async def end_data(self) -> Reply:
        link = self._live()
        waiter = link.expect()
        self._write(b".\r\n")
        return await self._wait(link, waiter, self.options.data_timeout)

    def abort(self) -> None:
        greeting = self._greeting
        if greeting is not None and greeting is not asyncio.current_task():
            self._greeting = None  # (a greeting that fails aborts itself and keeps its error for ready())
            greeting.cancel()
        self._drop()

    def _drop(self) -> None:
        self._pending.clear()
        link, self._link = self._link, None
        if link is not None:
            link.disarm()
        if link is not None and link.transport is not None and not link.lost:
            link.lost = True
            link.transport.abort()
        self._paused(False)

    def quit(self) -> None:
        greeting, self._greeting = self._greeting, None
        if greeting is not None:
            greeting.cancel()
        self._pending.clear()
        link, self._link = self._link, None
        if link is not None:
            link.disarm()
        if link is not None and link.transport is not None and not link.lost:
            link.lost = True
            link.transport.write(encode_command("QUIT"))
            link.transport.close()  # the QUIT reply is not waited for
        self._paused(False)

    def _live(self) -> _Link:
        if self._link is None or self._link.lost:
            raise BackendError("backend not connected", "lost")
        return self._link

    def _write(self, data: bytes) -> None:
        link = self._live()
        assert link.transport is not None
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending.clear()
        link.transport.write(data)

    async def _wait(self, link: _Link, waiter: asyncio.Future[Reply], timeout: float) -> Reply:
        if not waiter.done():
            link.arm(timeout)
        try:
            return await waiter
        except BackendError as e:
            if e.kind == "timeout":
                self.abort()
            raise


def _retrieved(greeting: asyncio.Future[None]) -> None:
    """A greeting nobody waited for (the client left first) fails quietly."""
    if not greeting.cancelled():
        greeting.exception()
