"""The asyncio adapter for MessagePack-RPC: many requests in flight per connection, each
answered when its decision is ready (out of order, tied by msgid). A stream that is not
MessagePack closes that one connection."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from checkid.engine.engine import Engine
from checkid.errors import ProtocolError
from checkid.protocols import eager
from checkid.protocols.flow import FlowControl
from checkid.protocols.msgpack_rpc.codec import (BadRequest, MessageTooLarge, Notification, Request, Response,
                                                 RpcParser, encode_response)
from checkid.protocols.msgpack_rpc.service import RpcError, RpcService

log = logging.getLogger(__name__)

FRONT = "msgpack-rpc"
#: stop reading from a client that has this many requests unanswered
MAX_IN_FLIGHT = 256


class RpcProtocol(asyncio.Protocol):
    def __init__(self, engine: Engine, idle_timeout: float = 600.0) -> None:
        self.engine = engine
        self.idle_timeout = idle_timeout
        self.parser = RpcParser()
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Future[Any]] = set()
        self.peer = "?"
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.peer = str(transport.get_extra_info("peername") or "unix")
        self.service = RpcService(self.engine, time.perf_counter)
        self.engine.counts[("connections", FRONT)] += 1
        self.engine.open_connections[FRONT] += 1
        self.flow = FlowControl(transport, self.idle_timeout, MAX_IN_FLIGHT,  # type: ignore[arg-type]
                                lambda: len(self.tasks), self._idle)

    def data_received(self, data: bytes) -> None:
        self.flow.activity()
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
        self.flow.update()

    def eof_received(self) -> bool:
        """The client is done sending: answer what it asked, then close."""
        self.eof = True
        return bool(self.tasks)  # False closes now; else _done closes after the last answer

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def _idle(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.open_connections[FRONT] -= 1
        self.flow.close()
        for task in self.tasks:
            task.cancel()

    def _start(self, coro: Any) -> None:
        task = eager.start(coro)  # a warm decision answers here, with no Task
        if task.done():
            return self._done(task)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self.tasks.discard(task)
        if self.eof and not self.tasks and self.transport is not None:
            self.transport.close()
            return
        self.flow.update()

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
