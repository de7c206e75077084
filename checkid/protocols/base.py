"""What every front-end server shares: the worker's :class:`ServerState` (counters, open
connections, graceful shutdown), :class:`FlowControl` (read back-pressure and the idle
deadline) and :class:`Server`, the base of each protocol's ``asyncio.Protocol`` (counting,
timers, fail/close, connection tracking). Each protocol keeps only its dispatch loop.

Time is a parameter: :class:`FlowControl` and the sessions compute deadlines from a given
``now`` (``get_timer()`` / ``handle_timer(now)``); only :class:`Server` arms ``loop.call_at``.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from checkid.errors import ProtocolError
from checkid.protocols.limits import LimitExceeded

log = logging.getLogger(__name__)

#: after the shutdown timeout, how long aborted connections get to report their loss
ABORT_WAIT = 1.0


class ServerState:
    """The connections of one worker's servers and their counters, shared by every listener.

    :param stats: what the msgpack-rpc ``stats`` method answers (the worker passes engine and
        front-end counters together); without it, ``counts``
    """

    def __init__(self, stats: Callable[[], Mapping[tuple[str, ...], int]] | None = None) -> None:
        #: ("connections", front), ("protocol_errors", front), ("internal_errors", front),
        #: ("limits_exceeded", front, limit), ("codec_exceptions", front)
        self.counts: Counter[tuple[str, ...]] = Counter()
        #: connections open now, by front-end name
        self.open: Counter[str] = Counter()
        #: the live connections
        self.connections: set[Server] = set()
        self.stats = stats
        #: shutdown began: a connection accepted from now on is shut down at once
        self.closing = False
        self._drained: asyncio.Future[None] | None = None

    def add(self, connection: Server) -> None:
        self.connections.add(connection)
        self.counts[("connections", connection.front)] += 1
        self.open[connection.front] += 1
        if self.closing:  # accepted in the same loop turn as the shutdown
            connection.shutdown()

    def remove(self, connection: Server) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
            self.open[connection.front] -= 1
        if not self.connections and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def shutdown(self, timeout: float) -> None:
        """Ask every open connection to finish gracefully, wait until all are closed or
        ``timeout`` seconds passed, then abort what is left."""
        self.closing = True
        for connection in list(self.connections):
            connection.shutdown()
        if await self._all_closed_within(timeout):
            return
        for connection in list(self.connections):
            log.info("%s: still busy at the end of the shutdown grace; aborting", connection.peer)
            connection.abort()
        await self._all_closed_within(ABORT_WAIT)

    async def _all_closed_within(self, seconds: float) -> bool:
        if self.connections:
            self._drained = asyncio.get_running_loop().create_future()
            await asyncio.wait({self._drained}, timeout=seconds)
        return not self.connections


class FlowControl:
    """Pauses reading while too many requests are in flight, too many bytes wait unhandled
    (``buffered``, when ``max_buffered`` is set) or the write buffer is full
    (``pause_writing``); says when a connection has been idle ``idle`` seconds (no data, and
    nothing in flight). No loop, no clock: ``now`` is given."""

    def __init__(self, transport: asyncio.Transport, idle: float, max_in_flight: int,
                 in_flight: Callable[[], int], now: float = 0.0,
                 buffered: Callable[[], int] | None = None, max_buffered: int = 0) -> None:
        self.transport = transport
        self.idle = idle
        self.max_in_flight = max_in_flight
        self.in_flight = in_flight
        #: bytes received and not yet handled, and the most that may wait (0: no bound)
        self.buffered = buffered
        self.max_buffered = max_buffered
        self.writing_paused = False
        self.reading_paused = False
        self.last = now

    def activity(self, now: float) -> None:
        self.last = now

    def update(self) -> None:
        """Pause or resume reading to match the in-flight count and the write buffer."""
        busy = (self.writing_paused or self.in_flight() >= self.max_in_flight
                or (self.max_buffered > 0 and self.buffered is not None and self.buffered() >= self.max_buffered))
        if busy and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        elif not busy and self.reading_paused and not self.transport.is_closing():
            self.reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.update()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.update()

    def get_timer(self) -> float | None:
        """When the connection becomes idle if nothing happens meanwhile (None: never)."""
        return self.last + self.idle if self.idle > 0 else None

    def handle_timer(self, now: float) -> bool:
        """Whether the connection is idle at ``now``; one with work in flight counts as
        active, so its idle time starts again."""
        if self.idle <= 0 or now < self.last + self.idle:
            return False
        if self.in_flight():
            self.last = now
            return False
        return True


class Parser(Protocol):
    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer. :raises ProtocolError: on a malformed stream"""
        ...


class Server(asyncio.Protocol):
    """One front-end connection: what the three protocols' servers share. Subclasses set
    ``parser`` and ``max_in_flight``, implement ``dispatch`` (their own order of answers),
    ``in_flight`` and ``shutdown``, and may add a deadline through ``get_timer``/``handle_timer``.

    Whatever a codec raises on the peer's bytes ends that connection only: a
    :class:`ProtocolError` through :meth:`refuse`, any other exception (a codec bug that
    hostile input found: RecursionError, struct.error, ...) through :meth:`undecodable`, which
    logs it, counts it as ``codec_exceptions`` and refuses the stream the same way."""

    #: reading pauses at this many requests (or commands) received and not yet answered
    max_in_flight = 64
    #: reading pauses while this many bytes received wait unhandled (0: only ``max_in_flight``)
    max_buffered = 0
    #: a malformed stream is aborted (nothing more is sent), rather than closed after the writes
    abort_on_error = False
    #: whether data is still read after a shutdown began (to finish a message)
    reads_while_closing = False
    parser: Parser

    def __init__(self, state: ServerState, front: str, idle_timeout: float) -> None:
        self.state = state
        self.front = front
        self.idle_timeout = idle_timeout
        self.peer = "?"
        #: shutdown asked: finish what is due, then close
        self.closing = False
        #: closed (or closing) by us: nothing more is read or written
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        self.loop = asyncio.get_running_loop()
        self.peer = str(transport.get_extra_info("peername") or "unix")
        self.flow = FlowControl(self.transport, self.idle_timeout, self.max_in_flight, self.in_flight,
                                self.loop.time(), self.buffered, self.max_buffered)
        self.state.add(self)
        self.arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.remove(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.lost()

    def data_received(self, data: bytes) -> None:
        if self.closing and not self.reads_while_closing:
            return  # shutting down: only what was asked before is answered
        self.flow.activity(self.loop.time())
        try:
            self.parser.receive_data(data)
        except ProtocolError as e:
            return self.refuse(e)
        except Exception as e:  # noqa: BLE001 - any codec failure ends this connection only
            return self.undecodable(e)
        self.dispatch()

    def dispatch(self) -> None:
        """Start (or answer) what the parser holds, in the protocol's order."""
        raise NotImplementedError

    def refuse(self, error: ProtocolError) -> None:
        """The stream is malformed (or passed a bound): this connection ends."""
        if isinstance(error, LimitExceeded):
            self.state.counts[("limits_exceeded", self.front, error.limit)] += 1
        self.fail(str(error), self.abort_on_error)

    def undecodable(self, error: Exception) -> None:
        """The codec raised something other than :class:`ProtocolError` on the peer's bytes:
        a protocol error of this connection (error reply where there is one, then close),
        never an exception out of ``data_received``. Logged without the traceback, which a
        client could otherwise make us print at will (debug level has it)."""
        log.debug("%s: %s codec raised", self.peer, self.front, exc_info=error)
        self.state.counts[("codec_exceptions", self.front)] += 1
        self.refuse(ProtocolError(f"undecodable input ({type(error).__name__}: {str(error)[:100]!r})"))

    def buffered(self) -> int:
        """Bytes received and not yet handled (what ``max_buffered`` bounds)."""
        return 0

    def lost(self) -> None:
        """The connection is gone: cancel what is still running for it."""

    def in_flight(self) -> int:
        """Requests received and not yet answered."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Finish gracefully: answer what is due, then close."""
        raise NotImplementedError

    def abort(self) -> None:
        self.close(abort=True)

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # -- timers -------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """The next deadline of this connection (the idle one here)."""
        return self.flow.get_timer()

    def handle_timer(self, now: float) -> None:
        if self.flow.handle_timer(now):
            self.close()

    def arm_timer(self) -> None:
        """Make the loop call :meth:`handle_timer` at the next deadline. A deadline that
        moved later needs no new timer: the early one finds nothing due and re-arms."""
        when = self.get_timer()
        if when is None or self.closed:
            return
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.handle_timer(self.loop.time())
        self.arm_timer()

    # -- ending ---------------------------------------------------------------------------
    def fail(self, reason: str, abort: bool = False) -> None:
        """The peer broke the protocol: log, count, close."""
        log.warning("%s: %s; closing the %s connection", self.peer, reason, self.front)
        self.state.counts[("protocol_errors", self.front)] += 1
        self.close(abort)

    def internal_error(self, error: BaseException, what: str = "internal error") -> None:
        """A bug of ours while serving: log with the traceback and count (the caller decides
        whether the connection can go on)."""
        log.error("%s: %s", self.peer, what, exc_info=error)
        self.state.counts[("internal_errors", self.front)] += 1

    def close(self, abort: bool = False) -> None:
        self.closed = True
        self.lost()
        self.transport.abort() if abort else self.transport.close()
