"""What every front-end server shares: the worker's :class:`ServerState` (counters, open
connections, the budget for unfinished requests, graceful shutdown), :class:`FlowControl`
(read back-pressure, the idle deadline and the request deadline) and :class:`Server`, the base
of each protocol's ``asyncio.Protocol`` (counting, timers, fail/close, connection tracking).
Each protocol keeps only its dispatch loop.

Three bounds hold across a worker's connections (issue 14): a request (a policy request up to
its empty line, one MessagePack message, one milter packet) must arrive whole within
``request_timeout`` of its first byte, whatever the idle timer says (1 byte a second would
otherwise hold a connection forever); the bytes all connections hold in requests not yet
complete stay within ``max_unfinished_bytes`` (past it, the connection holding the most is
closed); and a graceful close between requests half-closes and reads what the peer still
sends until its EOF (or ``LINGER`` seconds), since closing a socket with unread input makes
the kernel send a reset, which can destroy answers the peer has not read yet.

Time is a parameter: :class:`FlowControl` and the sessions compute deadlines from a given
``now`` (``get_timer()`` / ``handle_timer(now)``); only :class:`Server` arms ``loop.call_at``.
A new connection's timer is armed by one shared sweep of :class:`ServerState`, ``TIMER_DELAY``
after it began, unless a deadline comes sooner: most connections (a milter session, a
request or two) are over by then and never arm a timer of their own.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from checkid.errors import ProtocolError
from checkid.protocols.limits import LimitExceeded
from checkid.throttle import LogThrottle, left_out

log = logging.getLogger(__name__)

#: after the shutdown timeout, how long aborted connections get to report their loss
ABORT_WAIT = 1.0
#: after a graceful half-close, how long a peer's further input is read and dropped while its
#: EOF is awaited: a client's answers are out and it has had them for a round trip or so; one
#: that keeps sending this long gets a plain close
LINGER = 2.0
#: a shutdown waits this long from a connection's start for its first request when it has sent
#: none yet: a client that retries a request a closing worker refused (EOF) connects and writes
#: at once, and its new connection may be taken by a worker whose own SIGTERM is on its way
#: (back-to-back reloads); closing that one unasked would lose the retried request
FIRST_REQUEST_WAIT = 2.0
#: a new connection's timer is left to the state's next sweep, at most this long after it
#: began, when its first deadline is later (the idle one: minutes); arming a loop timer and
#: cancelling it at the close costs a connection about as much as its milter session's framing
TIMER_DELAY = 1.0


class ServerState:
    """The connections of one worker's servers and their counters, shared by every listener.

    :param stats: what the msgpack-rpc ``stats`` method answers (the worker passes engine and
        front-end counters together); without it, ``counts``
    :param max_unfinished_bytes: the budget for bytes held in requests not yet complete, over
        all connections (0: none)
    :param throttle: makes the rate limiter of one kind of log line (a client can make us
        refuse at will: a flood writes one line per interval); :class:`LogThrottle` unless given
    """

    def __init__(self, stats: Callable[[], Mapping[tuple[str, ...], int]] | None = None,
                 max_unfinished_bytes: int = 0, throttle: Callable[[], LogThrottle] = LogThrottle) -> None:
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
        self.max_unfinished_bytes = max_unfinished_bytes
        #: bytes each connection holds in its unfinished request (only those holding some)
        self.unfinished: dict[Server, int] = {}
        #: their sum
        self.unfinished_total = 0
        self._trimming = False
        self._throttle = throttle
        self._throttles: dict[str, LogThrottle] = {}
        #: open connections by listener (the value the registry's factory gives each one)
        self.by_listener: Counter[object] = Counter()
        #: connections whose timer the next sweep arms, and that sweep's timer and time
        self._unarmed: set[Server] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0

    def log_ready(self, kind: str, now: float) -> int | None:
        """Whether a line about ``kind`` may be written now (see :class:`LogThrottle`)."""
        throttle = self._throttles.get(kind)
        if throttle is None:
            throttle = self._throttles[kind] = self._throttle()
        return throttle.ready(now)

    def hold(self, connection: Server, size: int) -> None:
        """``connection`` now holds ``size`` bytes of an unfinished request. Past the budget, the
        connections holding the most are closed until the rest fit: an attacker's many
        half-sent messages go first, and a small request that tips the sum over is served (closing
        the newest data's connection instead would let the holders starve everyone else)."""
        old = self.unfinished.pop(connection, 0)
        if size > 0 and not connection.closed:
            self.unfinished[connection] = size
        else:
            size = 0
        self.unfinished_total += size - old
        budget = self.max_unfinished_bytes
        if not budget or self._trimming:
            return
        self._trimming = True  # the closes below come back here: one loop does it all
        try:
            while self.unfinished_total > budget and self.unfinished:
                largest = max(self.unfinished, key=self.unfinished.__getitem__)
                largest.over_budget(self.unfinished_total, budget)
                self.hold(largest, 0)
        finally:
            self._trimming = False

    def add(self, connection: Server) -> None:
        self.connections.add(connection)
        self.counts[("connections", connection.front)] += 1
        self.open[connection.front] += 1
        self.by_listener[connection.listener] += 1
        if self.closing:  # accepted in the same loop turn as the shutdown
            connection.shutdown()

    def arm_later(self, connection: Server, loop: asyncio.AbstractEventLoop) -> float:
        """Have the next sweep arm ``connection``'s timer (:meth:`Server.arm_timer`); returns
        when it runs (at most ``TIMER_DELAY`` from now): a deadline before it must be armed
        now."""
        self._unarmed.add(connection)
        if self._sweep is None:
            self._sweep_at = loop.time() + TIMER_DELAY
            self._sweep = loop.call_at(self._sweep_at, self._arm_unarmed)
        return self._sweep_at

    def _arm_unarmed(self) -> None:
        unarmed, self._unarmed, self._sweep = self._unarmed, set(), None
        for connection in unarmed:
            connection.timer_swept()

    def remove(self, connection: Server) -> None:
        self._unarmed.discard(connection)
        self.hold(connection, 0)
        if connection in self.connections:
            self.connections.remove(connection)
            self.open[connection.front] -= 1
            self.by_listener[connection.listener] -= 1
        if not self.connections and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def shutdown(self, timeout: float) -> None:
        """Ask every open connection to finish gracefully (a request begun is read to its end
        and answered, then the connection half-closes between requests), wait until all are
        closed or ``timeout`` seconds passed, then abort what is left."""
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
    nothing in flight), and when a request has taken more than ``request_timeout`` seconds
    from its first byte to its last (told by :meth:`received`; 0: no such deadline). No loop,
    no clock: ``now`` is given."""

    def __init__(self, transport: asyncio.Transport, idle: float, max_in_flight: int,
                 in_flight: Callable[[], int], now: float = 0.0,
                 buffered: Callable[[], int] | None = None, max_buffered: int = 0,
                 request_timeout: float = 0.0) -> None:
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
        self.request_timeout = request_timeout
        #: when the request now unfinished began (None: between requests)
        self.started: float | None = None
        self._completed = 0

    def activity(self, now: float) -> None:
        self.last = now

    def received(self, now: float, unfinished: int, completed: int) -> None:
        """Bytes arrived at ``now``; the codec holds ``unfinished`` bytes of a request not yet
        complete, and has completed ``completed`` requests so far. A request that completed in
        these bytes ends its deadline; one begun in them starts its own at ``now``."""
        if completed != self._completed:
            self._completed = completed
            self.started = None
        if not unfinished:
            self.started = None
        elif self.started is None:
            self.started = now

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
        """When the connection becomes idle, or its unfinished request overdue, if nothing
        happens meanwhile (None: never)."""
        idle = self.last + self.idle if self.idle > 0 else None
        due = self.request_due()
        return due if idle is None else idle if due is None else min(idle, due)

    def request_due(self) -> float | None:
        """When the unfinished request's time is up (None: no request unfinished, or no limit)."""
        if self.started is None or self.request_timeout <= 0:
            return None
        return self.started + self.request_timeout

    def overdue(self, now: float) -> bool:
        """Whether the unfinished request's time is up at ``now``. While reading is paused (the
        rest cannot be read: our doing), its time starts again, as the idle time does with work
        in flight."""
        due = self.request_due()
        if due is None or now < due:
            return False
        if self.reading_paused:
            self.started = now
            return False
        return True

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
    #: seconds a half-closed connection waits for the peer's EOF (:meth:`finish`)
    linger = LINGER
    parser: Parser

    def __init__(self, state: ServerState, front: str, idle_timeout: float, request_timeout: float = 0.0) -> None:
        self.state = state
        self.front = front
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.peer = "?"
        #: the listener this connection came from (the registry's factory sets it), for its cap
        self.listener: object = None
        #: shutdown asked: finish what is due, then close
        self.closing = False
        #: closed (or closing) by us: nothing more is read or written
        self.closed = False
        #: the peer half-closed: it sends nothing more
        self.eof = False
        #: half-closed by us (:meth:`finish`): what the peer still sends is read and dropped
        self.draining = False
        self._timer: asyncio.TimerHandle | None = None
        #: until then, a deadline no earlier is armed by the state's sweep (None: armed here)
        self._swept_at: float | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._first_wait: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        self.loop = asyncio.get_running_loop()
        self.made = self.loop.time()
        self.peer = str(transport.get_extra_info("peername") or "unix")
        self.flow = FlowControl(self.transport, self.idle_timeout, self.max_in_flight, self.in_flight,
                                self.loop.time(), self.buffered, self.max_buffered, self.request_timeout)
        self.state.add(self)
        self._swept_at = self.state.arm_later(self, self.loop)
        self.arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.remove(self)
        for timer in (self._timer, self._linger, self._first_wait):
            if timer is not None:
                timer.cancel()
        self._timer = self._linger = self._first_wait = None
        self.lost()

    def data_received(self, data: bytes) -> None:
        if self.closed or (self.closing and not self.reads_while_closing):
            return  # closed, or half-closed and draining; or shutting down: only what was asked is answered
        now = self.loop.time()
        self.flow.activity(now)
        try:
            self.parser.receive_data(data)
        except ProtocolError as e:
            return self.refuse(e)
        except Exception as e:  # noqa: BLE001 - any codec failure ends this connection only
            return self.undecodable(e)
        unfinished = self.unfinished()
        self.flow.received(now, unfinished, self.completed())
        if unfinished or self in self.state.unfinished:
            self.state.hold(self, unfinished)  # past the budget: this or another connection closes
            if self.closed:
                return
        self.dispatch()
        if unfinished or self._timer is None:
            # a request begun here has a deadline earlier than the idle one; with nothing
            # unfinished the next deadline is the idle one, only ever later than the one armed
            self.arm_timer()

    def eof_received(self) -> bool | None:
        """The peer is done sending: close (a subclass may first answer what it asked)."""
        self.eof = True
        return None

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

    def unfinished(self) -> int:
        """Bytes the codec holds of a request begun and not yet complete (what the request
        deadline and the worker's budget are about; 0: no such bound for this protocol)."""
        return 0

    def completed(self) -> int:
        """Requests the codec has completed so far (any count that changes with each)."""
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

    def wait_for_first_request(self, give_up: Callable[[], None]) -> bool:
        """At a shutdown of a connection that has sent no request yet: whether its first one is
        still awaited (it began less than ``FIRST_REQUEST_WAIT`` ago); if so, ``give_up`` is
        called when that time is up."""
        due = self.made + FIRST_REQUEST_WAIT
        if self.loop.time() >= due:
            return False
        self._first_wait = self.loop.call_at(due, give_up)
        return True

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # -- timers -------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """The next deadline of this connection (the idle one here)."""
        return self.flow.get_timer()

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self.flow.overdue(now):
            return self.request_timed_out(now)
        if self.flow.handle_timer(now):
            self.finish()

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
        elif self._swept_at is not None and when >= self._swept_at:
            return  # the state's sweep arms it in time
        self._timer = self.loop.call_at(when, self._on_timer)

    def timer_swept(self) -> None:
        """The state's sweep: from now on this connection arms its own timer."""
        self._swept_at = None
        self.arm_timer()

    def _on_timer(self) -> None:
        self._timer = None
        self.handle_timer(self.loop.time())
        self.arm_timer()

    # -- ending ---------------------------------------------------------------------------
    def request_timed_out(self, now: float) -> None:
        """A request did not arrive whole within ``request_timeout``: log (rate-limited),
        count, close; the partial request gets no answer."""
        self.state.counts[("request_timeouts", self.front)] += 1
        suppressed = self.state.log_ready("request_timeout", now)
        if suppressed is not None:
            log.warning("%s: %s request not complete %g s after its first byte (%d bytes so far); closing%s",
                        self.peer, self.front, self.request_timeout, self.unfinished(),
                        left_out(suppressed))
        self.close()

    def over_budget(self, total: int, budget: int) -> None:
        """The worker's unfinished requests hold ``total`` bytes, past ``budget``, and this
        connection holds the most: log (rate-limited), count, abort (its bytes go at once)."""
        self.state.counts[("connections_refused", self.front, "budget")] += 1
        suppressed = self.state.log_ready("budget", self.loop.time())
        if suppressed is not None:
            log.warning("%s: unfinished requests hold %d bytes, past max_unfinished_bytes = %d; closing the %s "
                        "connection holding the most (%d bytes)%s", self.peer, total, budget, self.front,
                        self.unfinished(),
                        left_out(suppressed))
        self.close(abort=True)

    def finish(self) -> None:
        """Close between requests, every answer written, without a reset: half-close, then
        read and drop what the peer still sends until its EOF or ``linger`` seconds (closing
        with unread input would make the kernel send RST, which can destroy the answers the peer
        has not read yet). A peer that retries what it had not been answered loses nothing."""
        if self.closed:
            return
        if self.eof or not self.transport.can_write_eof():
            return self.close()
        self.closed = self.draining = True
        self.lost()
        self.state.hold(self, 0)
        self.transport.write_eof()
        if self.flow.reading_paused:
            self.flow.reading_paused = False
            self.transport.resume_reading()
        self._linger = self.loop.call_later(self.linger, self._linger_over)

    def _linger_over(self) -> None:
        self._linger = None
        log.debug("%s: no EOF %g s after our half-close; closing", self.peer, self.linger)
        self.transport.close()

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
        self.state.hold(self, 0)
        self.transport.abort() if abort else self.transport.close()
