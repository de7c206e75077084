"""The asyncio adapter for MessagePack-RPC: many requests in flight per connection, each
answered when its decision is ready (out of order, tied by msgid). A stream that is not
MessagePack (or a message past a bound: size, nesting; or anything the codec raises) closes
that one connection, after an error reply to the request when its msgid could be read
(:meth:`Server.refuse`, :meth:`Server.undecodable`). A client's half-close, and a shutdown, are
answered (what was asked so far) and then closed."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from checkid.errors import ProtocolError
from checkid.protocols import eager
from checkid.protocols.base import Server, ServerState
from checkid.protocols.decider import Decider
from checkid.protocols.msgpack_rpc.codec import (BadRequest, MessageRefused, Notification, Request, Response,
                                                 RpcParser, encode_response)
from checkid.protocols.msgpack_rpc.service import RpcError, RpcService

log = logging.getLogger(__name__)

FRONT = "msgpack-rpc"
#: stop reading from a client that has this many requests unanswered
MAX_IN_FLIGHT = 256


class RpcProtocol(Server):
    max_in_flight = MAX_IN_FLIGHT
    parser: RpcParser

    def __init__(self, decider: Decider, state: ServerState, idle_timeout: float = 600.0) -> None:
        super().__init__(state, FRONT, idle_timeout)
        self.service = RpcService(decider, state, FRONT)
        self.parser = RpcParser()
        self.tasks: set[asyncio.Future[None]] = set()
        self.eof = False

    def in_flight(self) -> int:
        return len(self.tasks)

    def refuse(self, error: ProtocolError) -> None:
        if isinstance(error, MessageRefused) and error.msgid is not None:
            self._send(error.msgid, str(error), None)
        super().refuse(error)

    def dispatch(self) -> None:
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

    def shutdown(self) -> None:
        self.closing = True
        if not self.tasks:
            self.close()

    def lost(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        task = eager.start(coro)  # a warm decision answers here, with no Task
        if task.done():
            return self._done(task)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        self.tasks.discard(task)
        if (self.eof or self.closing) and not self.tasks and not self.closed:
            return self.close()
        self.flow.update()

    async def _answer(self, request: Request) -> None:
        try:
            result = await self.service.call(request.method, request.params)
        except RpcError as e:
            return self._send(request.msgid, str(e), None)
        except Exception as e:
            self.internal_error(e, f"{request.method} failed")
            return self._send(request.msgid, "internal error", None)
        self._send(request.msgid, None, result)

    async def _notified(self, note: Notification) -> None:
        try:
            await self.service.call(note.method, note.params)
        except RpcError as e:
            log.info("%s: notification %s: %s", self.peer, note.method, e)

    def _send(self, msgid: int, error: Any, result: Any) -> None:
        if not self.closed and not self.transport.is_closing():
            self.transport.write(encode_response(msgid, error, result))
