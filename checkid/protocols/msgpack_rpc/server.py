"""The asyncio adapter for MessagePack-RPC: many requests in flight per connection, each
answered when its decision is ready (out of order, tied by msgid). A stream that is not
MessagePack closes that one connection."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from checkid.engine.engine import Engine
from checkid.engine.errors import ProtocolError
from checkid.protocols.msgpack_rpc.codec import (BadRequest, MessageTooLarge, Notification, Request, Response,
                                                 RpcParser, encode_response)
from checkid.protocols.msgpack_rpc.service import RpcError, RpcService

log = logging.getLogger(__name__)

FRONT = "msgpack-rpc"
#: stop reading from a client that has this many requests unanswered
MAX_IN_FLIGHT = 256


class RpcProtocol(asyncio.Protocol):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.parser = RpcParser()
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.peer = "?"
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.peer = str(transport.get_extra_info("peername") or "unix")
        self.service = RpcService(self.engine, time.perf_counter)
        self.engine.counts[("connections", FRONT)] += 1
        self.engine.open_connections[FRONT] += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.receive_data(data)
        except MessageTooLarge as e:
            if e.msgid is not None:
                self._send(e.msgid, str(e), None)
            return self._fail(str(e))
        except ProtocolError as e:
            return self._fail(str(e))
        while (event := self.parser.next_event()) is not None:
            if isinstance(event, Request):
                self._start(self._answer(event))
            elif isinstance(event, Notification):
                self._start(self._notified(event))
            elif isinstance(event, BadRequest):
                self._send(event.msgid, event.error, None)
            elif isinstance(event, Response):
                log.debug("%s: ignoring a response sent to the server", self.peer)
        if self.transport is not None and len(self.tasks) >= MAX_IN_FLIGHT and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.open_connections[FRONT] -= 1
        for task in self.tasks:
            task.cancel()

    def _start(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if self.paused and len(self.tasks) < MAX_IN_FLIGHT and self.transport and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    async def _answer(self, request: Request) -> None:
        try:
            result = await self.service.call(request.method, request.params)
        except RpcError as e:
            return self._send(request.msgid, str(e), None)
        except Exception:
            log.exception("%s: %s failed", self.peer, request.method)
            self.engine.counts[("internal_errors", FRONT)] += 1
            return self._send(request.msgid, "internal error", None)
        self._send(request.msgid, None, result)

    async def _notified(self, note: Notification) -> None:
        try:
            await self.service.call(note.method, note.params)
        except RpcError as e:
            log.info("%s: notification %s: %s", self.peer, note.method, e)

    def _send(self, msgid: int, error: Any, result: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_response(msgid, error, result))

    def _fail(self, reason: str) -> None:
        log.warning("%s: %s; closing the connection", self.peer, reason)
        self.engine.counts[("protocol_errors", FRONT)] += 1
        if self.transport is not None:
            self.transport.close()
