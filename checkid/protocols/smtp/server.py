"""The asyncio adapter for the SMTP front door.

Commands are handled strictly in order, each once the one before it is answered, with no task
per connection (a warm decision and a local reply complete at once; a backend round trip
waits, and the backend's reply resumes the session without a Task: :mod:`.drive`). Replies are batched: they go out in one write when the codec has nothing more ready
(RFC 2920: a pipelined group's replies together). After a DATA command the codec waits until
the session answered it, then reads content or commands. Reading pauses while a command
waits, while unread input passes ``MAX_BUFFER``, and while the backend's write buffer is
high (back-pressure both ways; the base pauses on our own write buffer). A client gone
mid-DATA aborts the backend: no partial message is queued.

With ``proxy_protocol``, the connection must come from ``proxy_hosts`` and start with a
PROXY v1/v2 header (reference/front-door.md §1.3): nothing is sent before it is complete,
it has ``PROXY_TIMEOUT`` seconds to arrive, and its source address is the client's.

STARTTLS (RFC 3207) with the configured certificate: after the 220 the codec drops whatever
was pipelined behind the command (CVE-2011-0411), ``loop.start_tls`` wraps the transport, and
the session starts over. Limits: ``max_connections`` open sessions per worker and
``max_per_ip`` per client address (:class:`Occupancy`) get ``421 4.7.0`` before any backend
connection opens; a session idle ``idle_timeout`` seconds, or open ``session_timeout``, gets
``421 4.4.2`` and ends (a message in progress is aborted at the backend, never queued).
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from checkid.errors import ProtocolError
from checkid.protocols.base import Server, ServerState
from checkid.protocols.decider import Decider
from checkid.protocols.smtp import drive, proxyproto, replies
from checkid.protocols.smtp.codec import CommandParser, Mode, encode_reply
from checkid.protocols.smtp.events import ClientEvent, Command, Reply
from checkid.protocols.smtp.relay import ClientAddress, Relay, RelayOptions
from checkid.protocols.smtp.session import SmtpOptions, SmtpSession, State

log = logging.getLogger(__name__)

FRONT = "smtp"
#: unread client input (pipelined commands, content not yet relayed) before reading pauses
MAX_BUFFER = 256 * 1024
#: a PROXY header must arrive within this (the spec asks at least 3 s; Postfix waits 5)
PROXY_TIMEOUT = 5.0
#: the TLS handshake after STARTTLS (RFC 3207 sets none; Postfix's smtpd_starttls_timeout is
#: 300 s, asyncio's default 60 s: a handshake is a few round trips)
TLS_HANDSHAKE_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class DoorOptions:
    session: SmtpOptions
    relay: RelayOptions
    #: take a PROXY header first, from these networks only
    proxy_protocol: bool = False
    proxy_hosts: tuple[str, ...] = ()
    #: RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command
    idle_timeout: float = 300.0
    #: a whole session's deadline
    session_timeout: float = 3600.0
    #: open sessions per worker, and per client address (0: no cap), before a 421
    max_connections: int = 500
    max_per_ip: int = 50
    #: the certificate for STARTTLS (None: not offered)
    tls: ssl.SSLContext | None = None


class Occupancy:
    """Open sessions by client address, for ``max_per_ip``; one per listener in a worker
    (the listener factory makes it). Only open sessions have an entry."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()

    def take(self, ip: str, limit: int) -> bool:
        """Count one more session from ``ip``, unless it has ``limit`` (0: no limit)."""
        if limit and self.open[ip] >= limit:
            return False
        self.open[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]


class SmtpProtocol(Server):
    max_in_flight = 1
    reads_while_closing = True  # the message in progress is finished first
    parser: CommandParser

    def __init__(self, decider: Decider, state: ServerState, options: DoorOptions,
                 clients: Occupancy | None = None) -> None:
        super().__init__(state, FRONT, options.idle_timeout)
        self.decider = decider
        self.options = options
        self.clients = clients if clients is not None else Occupancy()
        #: the client address counted in ``clients`` (released once, when the session ends)
        self._counted_ip: str | None = None
        self._session_deadline = 0.0
        s = options.session
        self.parser = CommandParser(max_size=s.max_message, bare_lf=s.bare_lf)
        self.session: SmtpSession | None = None
        self.relay: Relay | None = None
        self.current: drive.Run[list[Reply]] | None = None
        self.out: list[Reply] = []
        self.proxy: proxyproto.ProxyParser | None = None
        self._proxy_deadline: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._session_deadline = asyncio.get_running_loop().time() + self.options.session_timeout
        super().connection_made(transport)
        if self.closed:  # accepted as the worker's shutdown began
            return
        if self.state.open[FRONT] > self.options.max_connections:
            return self._refuse_over_cap("max_connections", replies.TOO_MANY_CONNECTIONS)
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
        if client is not None:
            if not self.clients.take(client.ip, self.options.max_per_ip):
                return self._refuse_over_cap("max_per_ip", replies.TOO_MANY_FROM_YOU)
            self._counted_ip = client.ip
        self.relay = Relay(self.options.relay, client, self._backend_paused, self.state.counts)
        self.session = SmtpSession(self.decider, self.relay, self.options.session,
                                   client.ip if client is not None else None, FRONT, counts=self.state.counts)
        self._start(self.session.open())

    def _refuse_over_cap(self, cap: str, reply: Reply) -> None:
        """Too many sessions: 421 and close, before any backend connection is opened."""
        log.info("%s: %s reached; refused", self.peer, cap)
        self.state.counts[("smtp_refused", cap)] += 1
        self.transport.write(encode_reply(reply))
        self.close()

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
        except Exception as e:  # noqa: BLE001 - any codec failure is this connection's protocol error
            return self.undecodable(e)
        header = self.proxy.header
        if header is None:
            return
        parser, self.proxy, self._proxy_deadline = self.proxy, None, None
        local = self.transport.get_extra_info("sockname")
        peer = self.transport.get_extra_info("peername")
        if header.command == "LOCAL" or header.src_addr is None or header.src_port is None:
            self._begin(_address(peer, local))  # a health check (or no address): the real endpoints
        else:
            # the destination the client reached (the load balancer's), of the source's family
            self._begin(ClientAddress(header.src_addr, header.src_port, header.dst_addr or header.src_addr,
                                      header.dst_port or 0))
        if parser.remainder:
            self.parser.receive_data(parser.remainder)

    # -- the loop -------------------------------------------------------------------------
    def _start(self, coro: Coroutine[Any, Any, list[Reply]]) -> None:
        handling = drive.start(coro)
        if handling.done():
            self._answer(None, handling)
            self.dispatch()
        else:
            self.current = handling
            handling.then = functools.partial(self._handled, None)
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
            except Exception as e:  # noqa: BLE001 - any codec failure is this connection's protocol error
                return self.undecodable(e)
            if event is None:
                break
            handling = drive.start(session.handle(event, now))
            if not handling.done():
                self.current = handling
                handling.then = functools.partial(self._handled, event)
                break
            self._answer(event, handling)
        if self.relay is not None:
            self.relay.flush()
        if self.current is None or not self.parser.has_event:
            self._flush()
        self.flow.update()

    def _handled(self, event: ClientEvent | None, handling: drive.Run[list[Reply]]) -> None:
        self.current = None
        if not handling.cancelled() and not self.closed:
            self._answer(event, handling)
            self.dispatch()

    def _answer(self, event: ClientEvent | None, handling: drive.Run[list[Reply]]) -> None:
        error = handling.exception()
        if error is not None:
            self.internal_error(error, "internal error; closing")
            self.out.append(replies.BACKEND_LOST)
            return self._flush_and_close()
        self.out += handling.result()
        session = self.session
        assert session is not None
        if isinstance(event, Command) and self.parser.mode is Mode.WAIT and event.verb == self.parser.waiting:
            if session.state is State.DATA:
                self.parser.start_data()
            elif session.state is State.TLS:
                return self._start_tls()
            else:
                self.parser.resume()
        if session.closed:
            self._flush_and_close()

    # -- STARTTLS -------------------------------------------------------------------------
    def _start_tls(self) -> None:
        """The 220 goes out in plaintext, then the handshake; nothing is read meanwhile."""
        dropped = self.parser.start_tls()
        if dropped:
            log.warning("%s: %d bytes pipelined after STARTTLS dropped (CVE-2011-0411)", self.peer, dropped)
            self.state.counts[("smtp_starttls_pipelined",)] += 1
        self._flush()
        handshake = drive.start(self._handshake())
        if handshake.done():  # (it always waits for the handshake)
            return self._handled(None, handshake)
        self.current = handshake
        handshake.then = functools.partial(self._handled, None)

    async def _handshake(self) -> list[Reply]:
        assert self.options.tls is not None and self.session is not None
        error: BaseException | None = None
        try:
            transport = await self.loop.start_tls(self.transport, self, self.options.tls, server_side=True,
                                                  ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            transport, error = None, e
        if transport is None:
            log.info("%s: TLS handshake failed: %s", self.peer, error or "connection lost")
            self.state.counts[("smtp_tls_handshakes", "client", "failed")] += 1
            self.current = None  # this task: ending, nothing to cancel
            self.closed = True
            self.lost()
            if not self.transport.is_closing():
                self.transport.abort()
            return []
        self.state.counts[("smtp_tls_handshakes", "client", "ok")] += 1
        self.transport = transport
        self.flow.transport = self.transport
        self.flow.reading_paused = False  # the TLS transport starts reading; start_tls resumed the socket
        self.session.tls_started()
        return []

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
        deadlines = [self._session_deadline]
        if self._proxy_deadline is not None:
            deadlines.append(self._proxy_deadline)
        idle = self.flow.get_timer()
        if idle is not None:
            deadlines.append(idle)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self._proxy_deadline is not None and now >= self._proxy_deadline:
            return self.fail("no PROXY header in time", True)
        if now >= self._session_deadline:
            log.info("%s: session open %g s; closing", self.peer, self.options.session_timeout)
            return self._timed_out("session", replies.SESSION_TOO_LONG)
        if self.flow.handle_timer(now):
            self._timed_out("idle", replies.TIMEOUT)

    def _timed_out(self, kind: str, reply: Reply) -> None:
        self.state.counts[("smtp_timeouts", kind)] += 1
        if self.session is not None and self.session.state is not State.TLS:  # no plaintext inside a handshake
            self.out.append(reply)
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
        if self.session is not None:
            self.session.lost()
        if self._counted_ip is not None:
            self.clients.release(self._counted_ip)
            self._counted_ip = None


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
