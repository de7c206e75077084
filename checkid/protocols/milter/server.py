"""The asyncio adapter for the milter protocol.

Commands are answered strictly in order: each is handled as soon as the one before it is
answered, with no task per connection. A command that needs no decision is handled by a
plain call; one that does is driven at once (:func:`eager.start`; a warm decision completes
without suspending) and only one that waits on a lookup becomes a Task. The responses to
every command handled from one read (modifications + verdict at end of message included) go
out in one write, on a TCP_NODELAY socket (reference/milter.md §13: the Nagle stall; both
uvloop and asyncio set it on every TCP connection). After QUIT, which the MTA sends last and
expects no answer to, the connection closes at once. Reading pauses while
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
        #: responses encoded and not yet written: one write per batch of commands handled
        self._out: list[bytes] = []

    def in_flight(self) -> int:
        return self.parser.pending + (self.current is not None)

    def buffered(self) -> int:
        return self.parser.pending_bytes

    def unfinished(self) -> int:
        return self.parser.unfinished

    def completed(self) -> int:
        return self.parser.completed

    def dispatch(self) -> None:
        """Handle the queued commands in order until one has to wait; write their responses
        in one go."""
        now = self.loop.time()
        session, parser = self.session, self.parser
        while self.current is None and not self.closed:
            if self.closing and not session.in_message:
                self._flush()
                return self.finish()
            try:
                command = parser.next_event()
            except ProtocolError as e:
                self._flush()
                return self.refuse(e)
            except Exception as e:  # noqa: BLE001 - a payload the decoder did not foresee
                self._flush()
                return self.undecodable(e)
            if command is None:
                break
            try:
                reaction = session.step(command, now)
            except Exception as e:  # noqa: BLE001 - ProtocolError or a bug of ours: see _failed
                return self._failed(e)
            if isinstance(reaction, list):
                self._queue(reaction)
                continue
            handling = eager.start(reaction, self.loop)
            if not handling.done():
                self.current = handling
                handling.add_done_callback(self._handled)
                self._flush()
                self.arm_timer()  # a decision at end of message has a PROGRESS deadline
                break
            self._answer(handling)
        self._flush()
        self.flow.update()

    def _handled(self, handling: asyncio.Future[list[Response]]) -> None:
        self.current = None
        if not handling.cancelled():
            self._answer(handling)
            self.dispatch()

    def _answer(self, handling: asyncio.Future[list[Response]]) -> None:
        error = handling.exception()
        if error is not None:
            return self._failed(error)
        self._queue(handling.result())

    def _queue(self, responses: list[Response]) -> None:
        """Encode ``responses`` for the next write; after QUIT, write and close."""
        if responses:
            self._out += [encode_response(r) for r in responses]
        if self.session.closed:
            self._flush()
            self._quit()

    def _quit(self) -> None:
        """The MTA sent QUIT: it has read every answer it waited for and expects none more,
        so the connection closes at once, without the half-close and linger of
        :meth:`Server.finish` (whatever follows QUIT, as a second QUIT, is not read)."""
        self.close()

    def _failed(self, error: BaseException) -> None:
        """Handling a command raised: a :class:`ProtocolError` refuses the stream, anything
        else is a bug of ours; either way, the responses due before it go out first."""
        self._flush()
        if isinstance(error, ProtocolError):
            return self.refuse(error)
        self.internal_error(error, "internal error; closing")
        self.close()

    def _flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            if not self.closed and not self.transport.is_closing():
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

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
