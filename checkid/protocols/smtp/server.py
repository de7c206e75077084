"""The asyncio adapter for the SMTP front door.

Commands are handled strictly in order, each once the one before it is answered, with no task
per connection (a warm decision and a local reply complete at once; a backend round trip
waits). Replies are batched: they go out in one write when the codec has nothing more ready
(RFC 2920: a pipelined group's replies together). After a DATA command the codec waits until
the session answered it, then reads content or commands. Reading pauses while a command
waits, while unread input passes ``MAX_BUFFER``, and while the backend's write buffer is
high (back-pressure both ways; the base pauses on our own write buffer). A client gone
mid-DATA aborts the backend: no partial message is queued.

With ``proxy_protocol``, the connection must come from ``proxy_hosts`` and start with a
PROXY v1/v2 header (reference/front-door.md §1.3): nothing is sent before it is complete,
it has ``PROXY_TIMEOUT`` seconds to arrive, and its source address is the client's.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from checkid.errors import ProtocolError
from checkid.protocols import eager
from checkid.protocols.base import Server, ServerState
from checkid.protocols.decider import Decider
from checkid.protocols.smtp import proxyproto, replies
from checkid.protocols.smtp.codec import CommandParser, Mode, encode_reply
from checkid.protocols.smtp.events import ClientEvent, Command, Reply
from checkid.protocols.smtp.relay import ClientAddress, Relay, RelayOptions
from checkid.protocols.smtp.session import SmtpOptions, SmtpSession, State

FRONT = "smtp"
#: unread client input (pipelined commands, content not yet relayed) before reading pauses
MAX_BUFFER = 256 * 1024
#: a PROXY header must arrive within this (the spec asks at least 3 s; Postfix waits 5)
PROXY_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class DoorOptions:
    session: SmtpOptions
    relay: RelayOptions
    #: take a PROXY header first, from these networks only
    proxy_protocol: bool = False
    proxy_hosts: tuple[str, ...] = ()
    #: RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command
    idle_timeout: float = 300.0


class SmtpProtocol(Server):
    max_in_flight = 1
    reads_while_closing = True  # the message in progress is finished first
    parser: CommandParser

    def __init__(self, decider: Decider, state: ServerState, options: DoorOptions) -> None:
        super().__init__(state, FRONT, options.idle_timeout)
        self.decider = decider
        self.options = options
        s = options.session
        self.parser = CommandParser(max_size=s.max_message, bare_lf=s.bare_lf)
        self.session: SmtpSession | None = None
        self.relay: Relay | None = None
        self.current: asyncio.Future[list[Reply]] | None = None
        self.out: list[Reply] = []
        self.proxy: proxyproto.ProxyParser | None = None
        self._proxy_deadline: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if self.options.proxy_protocol:
            if not _from(peer, self.options.proxy_hosts):
                return self.fail(f"PROXY header expected from {self.options.proxy_hosts}, not from {peer}", True)
            self.proxy = proxyproto.ProxyParser()
            self._proxy_deadline = self.loop.time() + PROXY_TIMEOUT
            self.arm_timer()
            return
        self._begin(_address(peer, local))

    def _begin(self, client: ClientAddress | None) -> None:
        self.relay = Relay(self.options.relay, client, self._backend_paused)
        self.session = SmtpSession(self.decider, self.relay, self.options.session,
                                   client.ip if client is not None else None, FRONT)
        self._start(self.session.open())

    def data_received(self, data: bytes) -> None:
        if self.proxy is not None:
            return self._proxy_data(data)
        super().data_received(data)

    def _proxy_data(self, data: bytes) -> None:
        assert self.proxy is not None
        try:
            self.proxy.receive_data(data)
        except ProtocolError as e:
            return self.refuse(e)
        header = self.proxy.header
        if header is None:
            return
        parser, self.proxy, self._proxy_deadline = self.proxy, None, None
        local = self.transport.get_extra_info("sockname")
        peer = self.transport.get_extra_info("peername")
        if header.command == "LOCAL" or header.src_addr is None or header.src_port is None:
            self._begin(_address(peer, local))  # a health check (or no address): the real endpoints
        else:
            own = _address(peer, local)
            self._begin(ClientAddress(header.src_addr, header.src_port, own.local_ip if own else "127.0.0.1",
                                      own.local_port if own else 0))
        if parser.remainder:
            self.parser.receive_data(parser.remainder)

    # -- the loop -------------------------------------------------------------------------
    def _start(self, coro: Coroutine[Any, Any, list[Reply]]) -> None:
        handling = eager.start(coro)
        if handling.done():
            self._answer(None, handling)
            self.dispatch()
        else:
            self.current = handling
            handling.add_done_callback(lambda h: self._handled(None, h))
        self.flow.update()

    def dispatch(self) -> None:
        """Handle the queued events in order until one has to wait; then write the replies."""
        session = self.session
        if session is None:
            return
        now = self.loop.time()
        while self.current is None and not self.closed:
            if self.closing and session.state in (State.GREETED, State.READY):
                self.out.append(replies.SHUTTING_DOWN)
                return self._flush_and_close()
            try:
                event = self.parser.next_event()
            except ProtocolError as e:
                return self.refuse(e)
            if event is None:
                break
            handling = eager.start(session.handle(event, now))
            if not handling.done():
                self.current = handling
                handling.add_done_callback(functools.partial(self._handled, event))
                break
            self._answer(event, handling)
        if self.current is None or not self.parser.has_event:
            self._flush()
        self.flow.update()

    def _handled(self, event: ClientEvent | None, handling: asyncio.Future[list[Reply]]) -> None:
        self.current = None
        if not handling.cancelled() and not self.closed:
            self._answer(event, handling)
            self.dispatch()

    def _answer(self, event: ClientEvent | None, handling: asyncio.Future[list[Reply]]) -> None:
        error = handling.exception()
        if error is not None:
            self.internal_error(error, "internal error; closing")
            self.out.append(replies.BACKEND_LOST)
            return self._flush_and_close()
        self.out += handling.result()
        session = self.session
        assert session is not None
        if isinstance(event, Command) and event.verb == "DATA" and self.parser.mode is Mode.WAIT:
            self.parser.start_data() if session.state is State.DATA else self.parser.resume()
        if session.closed:
            self._flush_and_close()

    def _flush(self) -> None:
        if self.out and not self.closed and not self.transport.is_closing():
            self.transport.write(b"".join(encode_reply(r) for r in self.out))
        self.out.clear()

    def _flush_and_close(self) -> None:
        self._flush()
        self.close()

    def in_flight(self) -> int:
        busy = (self.current is not None or self.parser.buffered > MAX_BUFFER
                or (self.relay is not None and self.relay.paused))
        return int(busy)

    def _backend_paused(self, paused: bool) -> None:
        if not self.closed:
            self.flow.update()
            if not paused:
                self.dispatch()

    # -- timers and ending ---------------------------------------------------------------
    def get_timer(self) -> float | None:
        idle = self.flow.get_timer()
        if self._proxy_deadline is None:
            return idle
        return self._proxy_deadline if idle is None else min(idle, self._proxy_deadline)

    def handle_timer(self, now: float) -> None:
        if self._proxy_deadline is not None and now >= self._proxy_deadline:
            return self.fail("no PROXY header in time", True)
        if self.flow.handle_timer(now):
            if self.session is not None:
                self.out.append(replies.TIMEOUT)
            self._flush_and_close()

    def shutdown(self) -> None:
        self.closing = True
        if self.current is None:
            if self.session is None:
                return self.close()
            self.dispatch()

    def lost(self) -> None:
        if self.current is not None:
            self.current.cancel()
            self.current = None
        if self.relay is not None:
            self.relay.abort()  # mid-DATA: the message is not finished, so never queued


def _address(peer: object, local: object) -> ClientAddress | None:
    if not isinstance(peer, tuple) or not isinstance(local, tuple):
        return None  # a unix socket: no client address
    return ClientAddress(str(peer[0]), int(peer[1]), str(local[0]), int(local[1]))


def _from(peer: object, networks: tuple[str, ...]) -> bool:
    if not isinstance(peer, tuple):
        return False
    try:
        ip = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)
