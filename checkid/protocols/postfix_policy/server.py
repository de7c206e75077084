"""The asyncio adapter for the policy protocol: bytes in, codec, session, replies out.

Requests are answered in order even when pipelined (decisions run concurrently, replies
wait for their turn). A malformed stream or an internal error closes the connection with
no reply, as Postfix expects (it retries). In ``oneshot`` mode (Exim's ``${readsocket}``)
the first answer is followed by a close; in any mode a client's half-close is answered (what
was asked so far) and then closed. A shutdown (a reload) closes only between requests: the
requests begun before it (one still arriving included, within the request deadline) are
answered, then the connection half-closes (:meth:`Server.finish`): a request sent after the
shutdown began gets a clean EOF, and Postfix, which retries a lost policy connection once,
asks again elsewhere.
"""
from __future__ import annotations

import asyncio
from collections import deque

from checkid.errors import ProtocolError
from checkid.protocols import eager
from checkid.protocols.base import Server, ServerState
from checkid.protocols.decider import Decider
from checkid.protocols.postfix_policy.codec import RequestParser, encode_reply
from checkid.protocols.postfix_policy.session import PolicyOptions, PolicySession

#: stop reading from a client that has this many requests unanswered
MAX_IN_FLIGHT = 64


class PolicyProtocol(Server):
    max_in_flight = MAX_IN_FLIGHT
    abort_on_error = True  # Postfix retries a connection closed with no reply
    reads_while_closing = True  # a request begun before a shutdown is read to its end
    parser: RequestParser

    def __init__(self, decider: Decider, state: ServerState, options: PolicyOptions, oneshot: bool = False,
                 idle_timeout: float = 600.0, request_timeout: float = 0.0) -> None:
        super().__init__(state, "policy-oneshot" if oneshot else "policy", idle_timeout, request_timeout)
        self.oneshot = oneshot
        self.session = PolicySession(decider, options, self.front)
        self.parser = RequestParser()
        #: the answers not yet written, in request order
        self.tasks: deque[asyncio.Future[str]] = deque()
        #: requests taken from the parser so far; after a shutdown, those up to ``answer_until``
        self.taken = 0
        self.answer_until = 0
        #: the last action written and its encoding (most answers repeat the one before)
        self._reply: tuple[str | None, bytes] = (None, b"")

    def in_flight(self) -> int:
        return len(self.tasks)

    def unfinished(self) -> int:
        return self.parser.unfinished

    def completed(self) -> int:
        return self.parser.completed

    def eof_received(self) -> bool:
        if self.draining:
            return False
        self.eof = True
        try:
            self.parser.receive_eof()
        except ProtocolError as e:
            self.refuse(e)
            return False
        except Exception as e:  # noqa: BLE001 - any codec failure is this connection's protocol error
            self.undecodable(e)
            return False
        self.dispatch()
        return bool(self.tasks)  # keep the write side open until the answers are out

    def shutdown(self) -> None:
        self.closing = True
        begun = bool(self.parser.pending) or (self.taken == 0 and self.wait_for_first_request(self._no_first_request))
        self.answer_until = self.taken + (1 if begun else 0)
        self._close_when_answered()

    def _no_first_request(self) -> None:
        """Shutting down, the first request did not come in time: close (one begun is finished)."""
        if self.taken == 0 and not self.parser.pending:
            self.answer_until = 0
            self._close_when_answered()

    def lost(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()

    def dispatch(self) -> None:
        while (request := self.parser.next_event()) is not None:
            if self.closed or (self.oneshot and self.tasks):
                continue  # oneshot: only the first request of the connection is answered
            if self.closing and self.taken >= self.answer_until:
                continue  # begun after the shutdown: the client gets EOF, and asks again
            self.taken += 1
            task = eager.start(self.session.answer(request), self.loop)  # a warm answer is done here
            self.tasks.append(task)
            if task.done():
                self._write_answered()
            else:
                task.add_done_callback(self._flush)
        self.flow.update()
        self._close_when_answered()

    def _flush(self, _task: asyncio.Future[str]) -> None:
        if self._write_answered():
            self.flow.update()
            self._close_when_answered()

    def _write_answered(self) -> bool:
        """Write the answers done, in request order; False when that ended the connection."""
        while self.tasks and self.tasks[0].done() and not self.closed:
            task = self.tasks.popleft()
            if task.cancelled():
                return False
            error = task.exception()
            if isinstance(error, ProtocolError):
                self.refuse(error)
                return False
            if error is not None:
                self.internal_error(error, "internal error, closing without reply")
                self.close(abort=True)
                return False
            action = task.result()
            last, reply = self._reply
            if action != last:
                reply = encode_reply(action)
                self._reply = (action, reply)
            self.transport.write(reply)
            if self.oneshot:
                self.finish()
                return False
        return True

    def _close_when_answered(self) -> None:
        if self.tasks or self.closed:
            return
        if (self.closing and self.taken >= self.answer_until) or (self.eof and not self.parser.pending):
            self.finish()
