"""The asyncio adapter for the milter protocol.

Commands are answered strictly in order: each is handled as soon as the one before it is
answered, with no task per connection (a warm one completes at once). Every command's
responses (modifications + verdict at end of message) go out in one write, on a
TCP_NODELAY socket (reference/milter.md §13: the Nagle stall). Reading pauses while
``MAX_QUEUED`` commands, or ``MAX_QUEUED_BYTES`` of them, wait (the MTA sends a message's
headers and body without waiting for replies while a decision is pending): what waits stays
in the MTA's socket, and a body is streamed to the engine's sink as it is handled, never
kept. A malformed stream, or one past a session bound (macros, recipients: see
``milter/session.py``), closes that connection with a log line and a metric.

What one connection may hold is so bounded: about ``MAX_QUEUED_BYTES`` plus one packet and
one read queued, the session's macros (``MAX_MACRO_BYTES``), one message's recipients
(``MAX_RCPT_BYTES``) and headers (``MAX_HEADER_BYTES``): under 10 MiB. On shutdown a connection between messages closes at once; one in a
message closes after that message's end-of-message reply (or ABORT); either way with a
half-close (:meth:`Server.finish`), never a reset that could destroy the last reply. A packet
must arrive whole within the request deadline of its first byte.
"""
from __future__ import annotations

import asyncio
import socket

from checkid.errors import ProtocolError
from checkid.protocols import eager
from checkid.protocols.base import Server, ServerState
from checkid.protocols.decider import Decider
from checkid.protocols.milter.codec import CommandParser, encode_response
from checkid.protocols.milter.events import Response
from checkid.protocols.milter.session import MilterOptions, MilterSession

FRONT = "milter"
#: stop reading from an MTA that has sent this many commands not yet handled
MAX_QUEUED = 256
#: ... or this many bytes of them: twice the largest packet (``codec.MAX_PACKET``), so one
#: maximal header always gets in, and 32 of Postfix's 64 KiB body chunks (MILTER_CHUNK_SIZE);
#: 256 commands of 1 MiB each would otherwise be 256 MiB held by one connection
MAX_QUEUED_BYTES = 2 * 1024 * 1024


class MilterProtocol(Server):
    max_in_flight = MAX_QUEUED
    max_buffered = MAX_QUEUED_BYTES
    reads_while_closing = True  # the message in progress is finished first
    parser: CommandParser

    def __init__(self, decider: Decider, state: ServerState, options: MilterOptions,
                 idle_timeout: float = 600.0, request_timeout: float = 0.0) -> None:
        super().__init__(state, FRONT, idle_timeout, request_timeout)
        self.session = MilterSession(decider, options, FRONT, state.counts)
        self.parser = CommandParser()
        #: the command being handled, while it waits (for a decision)
        self.current: asyncio.Future[list[Response]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    def in_flight(self) -> int:
        return self.parser.pending + (self.current is not None)

    def buffered(self) -> int:
        return self.parser.pending_bytes

    def unfinished(self) -> int:
        return self.parser.unfinished

    def completed(self) -> int:
        return self.parser.completed

    def dispatch(self) -> None:
        """Handle the queued commands in order until one has to wait."""
        now = self.loop.time()
        while self.current is None and not self.closed:
            if self.closing and not self.session.in_message:
                return self.finish()
            try:
                command = self.parser.next_event()
            except ProtocolError as e:
                return self.refuse(e)
            except Exception as e:  # noqa: BLE001 - a payload the decoder did not foresee
                return self.undecodable(e)
            if command is None:
                break
            handling = eager.start(self.session.handle(command, now))
            if not handling.done():
                self.current = handling
                handling.add_done_callback(self._handled)
                self.arm_timer()  # a decision at end of message has a PROGRESS deadline
                break
            self._answer(handling)
        self.flow.update()

    def _handled(self, handling: asyncio.Future[list[Response]]) -> None:
        self.current = None
        if not handling.cancelled():
            self._answer(handling)
            self.dispatch()

    def _answer(self, handling: asyncio.Future[list[Response]]) -> None:
        error = handling.exception()
        if isinstance(error, ProtocolError):
            return self.refuse(error)
        if error is not None:
            self.internal_error(error, "internal error; closing")
            return self.close()
        self._write(handling.result())
        if self.session.closed:
            self.finish()

    def _write(self, responses: list[Response]) -> None:
        if responses and not self.closed and not self.transport.is_closing():
            self.transport.write(b"".join(encode_response(r) for r in responses))

    def get_timer(self) -> float | None:
        idle, progress = self.flow.get_timer(), self.session.get_timer()
        return progress if idle is None else idle if progress is None else min(idle, progress)

    def handle_timer(self, now: float) -> None:
        self._write(self.session.handle_timer(now))
        super().handle_timer(now)

    def shutdown(self) -> None:
        self.closing = True
        if self.current is None:
            self.dispatch()

    def lost(self) -> None:
        if self.current is not None:
            self.current.cancel()
            self.current = None
