"""Run a session step (a coroutine) without a Task: :func:`start` runs it at once, and each
Future it waits on resumes it from that Future's done callback.

A Task per waiting command costs the Task, a loop turn for its first step, one to wake it and
one more for its own done callbacks; here a backend reply resumes the session in the turn it
arrives and the server is told at once (``then``). Like :mod:`checkid.protocols.eager`, the
steps run in one copied contextvars Context; unlike a Task, ``asyncio.current_task()`` is None
inside (so ``asyncio.timeout`` cannot be used there; ``wait_for`` and Futures can).
"""
from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Run(Generic[T]):
    """One coroutine being driven; its outcome once :meth:`done`."""

    __slots__ = ("_coro", "_context", "_waiting", "_done", "_result", "_error", "_cancelled", "then")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._context = contextvars.copy_context()
        self._waiting: asyncio.Future[Any] | None = None
        self._done = False
        self._result: T | None = None
        self._error: BaseException | None = None
        self._cancelled = False
        #: called once, when it ends after :func:`start` returned (not when it ends inside it)
        self.then: Callable[[Run[T]], None] | None = None

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return self._cancelled

    def exception(self) -> BaseException | None:
        return self._error

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def cancel(self) -> None:
        """As a Task's: the Future waited on is cancelled, the coroutine gets CancelledError;
        ``then`` is not called."""
        if self._done:
            return
        self._cancelled = True
        self.then = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.remove_done_callback(self._wake)
            waiting.cancel()
        self._step(asyncio.CancelledError())

    def _wake(self, future: asyncio.Future[Any]) -> None:
        self._waiting = None
        self._step(None)

    def _step(self, error: BaseException | None) -> None:
        try:
            if error is None:
                yielded = self._context.run(self._coro.send, None)
            else:
                yielded = self._context.run(self._coro.throw, error)
        except StopIteration as end:
            return self._finish(end.value, None)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # the coroutine's own error (or its cancellation): its outcome
            return self._finish(None, e)
        if yielded is None:  # a bare yield (asyncio.sleep(0)): go on in the next loop turn
            blocker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            blocker.set_result(None)
            yielded = blocker
        else:
            yielded._asyncio_future_blocking = False  # what a Task does with a Future it waits on
        self._waiting = yielded
        yielded.add_done_callback(self._wake)

    def _finish(self, result: T | None, error: BaseException | None) -> None:
        self._done, self._result, self._error = True, result, error
        self._coro = None  # type: ignore[assignment]  # the frame goes now, not with this object
        then, self.then = self.then, None
        if then is not None:
            then(self)


def start(coro: Coroutine[Any, Any, T]) -> Run[T]:
    """Run ``coro`` until it waits or ends; what it waits on resumes it."""
    run = Run(coro)
    run._step(None)
    return run
