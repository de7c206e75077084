"""The asyncio adapter for MessagePack-RPC: many requests in flight per connection, each
answered when its decision is ready (out of order, tied by msgid). A stream that is not
MessagePack (or a message past a bound: size, nesting; or anything the codec raises) closes
that one connection, after an error reply to the request when its msgid could be read
(:meth:`Server.refuse`, :meth:`Server.undecodable`). A client's half-close is answered (what
was asked so far) and then closed. A shutdown (a reload) closes only between messages: the
requests begun before it (one still arriving included, within the request deadline) are
answered, then the connection half-closes (:meth:`Server.finish`); a request sent after the
shutdown began gets a clean EOF instead of an answer, for the client to send again."""
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
    reads_while_closing = True  # a message begun before a shutdown is read to its end
    parser: RpcParser

    def __init__(self, decider: Decider, state: ServerState, idle_timeout: float = 600.0,
                 request_timeout: float = 0.0) -> None:
        super().__init__(state, FRONT, idle_timeout, request_timeout)
        self.service = RpcService(decider, state, FRONT)
        self.parser = RpcParser()
        self.tasks: set[asyncio.Future[None]] = set()
        #: messages taken from the parser so far; after a shutdown, those up to ``answer_until``
        self.taken = 0
        self.answer_until = 0

    def in_flight(self) -> int:
        return len(self.tasks)

    def unfinished(self) -> int:
        return self.parser.unfinished

    def completed(self) -> int:
        return self.parser.completed

    def refuse(self, error: ProtocolError) -> None:
        if isinstance(error, MessageRefused) and error.msgid is not None:
            self._send(error.msgid, str(error), None)
        super().refuse(error)

    def dispatch(self) -> None:
        while (event := self.parser.next_event()) is not None:
            if self.closed or (self.closing and self.taken >= self.answer_until):
                continue  # begun after the shutdown: the client gets EOF, and asks again
            self.taken += 1
            if isinstance(event, Request):
                self._start(self._answer(event))
            elif isinstance(event, Notification):
                self._start(self._notified(event))
            elif isinstance(event, BadRequest):
                self._send(event.msgid, event.error, None)
            elif isinstance(event, Response):
                log.debug("%s: ignoring a response sent to the server", self.peer)
        self.flow.update()
        self._finish_when_answered()

    def eof_received(self) -> bool:
        """The client is done sending: answer what it asked, then close."""
        if self.draining:
            return False
        self.eof = True
        return bool(self.tasks)  # False closes now; else _done closes after the last answer

    def shutdown(self) -> None:
        self.closing = True
        begun = bool(self.parser.unfinished) or (self.taken == 0 and self.wait_for_first_request(self._no_first_request))
        self.answer_until = self.taken + (1 if begun else 0)
        self._finish_when_answered()

    def _no_first_request(self) -> None:
        """Shutting down, the first request did not come in time: close (one begun is finished)."""
        if self.taken == 0 and not self.parser.unfinished:
            self.answer_until = 0
            self._finish_when_answered()

    def _finish_when_answered(self) -> None:
        if not self.tasks and not self.closed and (self.closing and self.taken >= self.answer_until):
            self.finish()

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
        if self.eof and not self.tasks and not self.closed:
            return self.close()
        self._finish_when_answered()
        if not self.closed:
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
