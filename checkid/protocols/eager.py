"""Start a coroutine at once, as Python 3.12's eager tasks do, on 3.11.

A warm decision never suspends: wrapping it in a Task costs a Task object, a loop iteration
for its first step and another for its done callbacks — several microseconds per request,
as much as some whole pipeline stages. :func:`start` runs the coroutine up to its first
suspension right away; one that finishes comes back as a done Future, one that suspends
continues as a Task from where it stopped, in the same contextvars Context (so a context
variable set before the suspension is reset in the Context that set it).
"""
from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def start(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[T]:
    """Run ``coro`` until it suspends or ends; return a Future (a Task if it suspended).

    :param loop: the running loop, when the caller has it (on 3.11 finding it costs a
        ``getpid`` system call per call)
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    try:
        yielded = context.run(coro.send, None)
    except StopIteration as done:
        future: asyncio.Future[T] = loop.create_future()
        future.set_result(done.value)
        return future
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:
        future = loop.create_future()
        future.set_exception(error)
        return future
    if yielded is not None:
        # the Future's await marked it blocking for the Task that will wait on it; until our Task
        # takes it up, another coroutine (the next pipelined request sharing the same lookup)
        # may await it too and its Task clears the mark: ours would then find it unmarked
        # ("await wasn't used with future"). _Wait marks it again when it hands it over.
        yielded._asyncio_future_blocking = False
    return loop.create_task(_resume(coro, yielded), context=context)


async def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    """Go on with a coroutine that suspended on ``yielded`` (a Future, or None for a bare
    yield), as its own Task would: wait, then resume it, or throw in what the wait raised
    (the future's exception, a cancellation)."""
    while True:
        try:
            await _Wait(yielded)
        except BaseException as error:  # the future's exception, or our cancellation: theirs now
            try:
                yielded = coro.throw(error)
            except StopIteration as done:
                return done.value
            continue
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            return done.value


class _Wait:
    """Hand the inner coroutine's Future to our Task, marked as blocking as its own await did."""

    __slots__ = ("future",)

    def __init__(self, future: Any) -> None:
        self.future = future

    def __await__(self) -> Generator[Any, None, None]:
        if self.future is not None:
            self.future._asyncio_future_blocking = True
        yield self.future
