"""The asyncio adapter for the milter protocol.

Commands are answered strictly in order by one consumer task per connection; every
command's responses (modifications + verdict at end of message) go out in one write, on a
TCP_NODELAY socket (reference/milter.md §13: the Nagle stall). A malformed stream closes
that connection with a log line and a metric.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time

from checkid.engine.engine import Engine
from checkid.errors import ProtocolError
from checkid.protocols.flow import FlowControl
from checkid.protocols.milter.codec import CommandParser, encode_response
from checkid.protocols.milter.events import Response
from checkid.protocols.milter.session import MilterOptions, MilterSession

log = logging.getLogger(__name__)

FRONT = "milter"
#: stop reading from an MTA that has sent this many commands not yet handled
MAX_QUEUED = 256


class MilterProtocol(asyncio.Protocol):
    def __init__(self, engine: Engine, options: MilterOptions, idle_timeout: float = 600.0) -> None:
        self.engine = engine
        self.options = options
        self.idle_timeout = idle_timeout
        self.parser = CommandParser()
        self.transport: asyncio.Transport | None = None
        self.wakeup = asyncio.Event()
        self.queued = 0
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer = str(transport.get_extra_info("peername") or "unix")
        engine = self.engine
        self.session = MilterSession(lambda env: engine.decide(env, frontend=FRONT), self.options,
                                     time.perf_counter, self._write, engine.thresholds.key_for)
        engine.counts[("connections", FRONT)] += 1
        engine.open_connections[FRONT] += 1
        self.flow = FlowControl(transport, self.idle_timeout, MAX_QUEUED,  # type: ignore[arg-type]
                                lambda: self.queued, self._close)
        self.consumer = asyncio.ensure_future(self._consume())

    def data_received(self, data: bytes) -> None:
        self.flow.activity()
        try:
            self.parser.receive_data(data)
        except ProtocolError as e:
            return self._fail(str(e))
        self.wakeup.set()

    async def _consume(self) -> None:
        while True:
            try:
                command = self.parser.next_event()
            except ProtocolError as e:
                return self._fail(str(e))
            if command is None:
                self.flow.update()
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            try:
                responses = await self.session.handle(command)
            except ProtocolError as e:
                return self._fail(str(e))
            except Exception:
                log.exception("%s: internal error; closing", self.peer)
                self.engine.counts[("internal_errors", FRONT)] += 1
                return self._close()
            self._write(responses)
            if self.session.closed:
                return self._close()

    def _write(self, responses: list[Response]) -> None:
        if responses and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(encode_response(r) for r in responses))

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.open_connections[FRONT] -= 1
        self.flow.close()
        self.consumer.cancel()

    def _fail(self, reason: str) -> None:
        log.warning("%s: %s; closing the milter connection", self.peer, reason)
        self.engine.counts[("protocol_errors", FRONT)] += 1
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
