"""The asyncio adapter for the policy protocol: bytes in, codec, session, replies out.

Requests are answered in order even when pipelined (decisions run concurrently, replies
wait for their turn). A malformed stream or an internal error closes the connection with
no reply, as Postfix expects (it retries). In ``oneshot`` mode (Exim's ``${readsocket}``)
the first answer is followed by a close; in any mode a client's half-close is answered and
then closed.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from checkid.engine.engine import Engine
from checkid.errors import ProtocolError
from checkid.protocols import eager
from checkid.protocols.flow import FlowControl
from checkid.protocols.postfix_policy.codec import RequestParser, encode_reply
from checkid.protocols.postfix_policy.session import PolicyOptions, PolicySession

log = logging.getLogger(__name__)

#: stop reading from a client that has this many requests unanswered
MAX_IN_FLIGHT = 64


class PolicyProtocol(asyncio.Protocol):
    def __init__(self, engine: Engine, options: PolicyOptions, oneshot: bool = False,
                 idle_timeout: float = 600.0) -> None:
        self.engine = engine
        self.idle_timeout = idle_timeout
        self.options = options
        self.oneshot = oneshot
        self.transport: asyncio.Transport | None = None
        self.parser = RequestParser()
        self.tasks: deque[asyncio.Future[str]] = deque()
        self.eof = False
        self.done = False
        self.peer = "?"
        self.front = "policy"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.peer = str(transport.get_extra_info("peername") or "unix")
        self.front = "policy-oneshot" if self.oneshot else "policy"
        engine = self.engine
        self.session = PolicySession(lambda env: engine.decide(env, frontend=self.front), self.options,
                                     time.perf_counter, self.front, engine.thresholds.key_for)
        engine.counts[("connections", self.front)] += 1
        engine.open_connections[self.front] += 1
        self.flow = FlowControl(transport, self.idle_timeout, MAX_IN_FLIGHT,  # type: ignore[arg-type]
                                lambda: len(self.tasks), self._close)

    def data_received(self, data: bytes) -> None:
        self.flow.activity()
        try:
            self.parser.receive_data(data)
        except ProtocolError as e:
            return self._fail(str(e))
        self._start_requests()

    def eof_received(self) -> bool:
        self.eof = True
        try:
            self.parser.receive_eof()
        except ProtocolError as e:
            self._fail(str(e))
            return False
        self._start_requests()
        return bool(self.tasks)  # keep the write side open until the answers are out

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.open_connections[self.front] -= 1
        self.flow.close()
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
        self.done = True

    def _start_requests(self) -> None:
        while (request := self.parser.next_event()) is not None:
            if self.done or (self.oneshot and self.tasks):
                continue  # oneshot: only the first request of the connection is answered
            task = eager.start(self.session.answer(request))  # a warm answer is done here
            self.tasks.append(task)
            if task.done():
                self._flush(task)
            else:
                task.add_done_callback(self._flush)
        self.flow.update()

    def _flush(self, _task: asyncio.Future[str]) -> None:
        assert self.transport is not None
        while self.tasks and self.tasks[0].done() and not self.done:
            task = self.tasks.popleft()
            if task.cancelled():
                return
            error = task.exception()
            if error is not None:
                if isinstance(error, ProtocolError):
                    return self._fail(str(error))
                log.error("%s: internal error, closing without reply", self.peer, exc_info=error)
                self.engine.counts[("internal_errors", self.front)] += 1
                return self._close(abort=True)
            self.transport.write(encode_reply(task.result()))
            if self.oneshot:
                return self._close()
        self.flow.update()
        if self.eof and not self.tasks and not self.parser.pending:
            self._close()

    def _fail(self, reason: str) -> None:
        log.warning("%s: %s; closing the connection", self.peer, reason)
        self.engine.counts[("protocol_errors", self.front)] += 1
        self._close(abort=True)

    def _close(self, abort: bool = False) -> None:
        self.done = True
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
        if self.transport is not None:
            self.transport.abort() if abort else self.transport.close()
