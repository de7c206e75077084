"""Eager start: a coroutine that never suspends costs no Task; one that does behaves as its Task would."""
from __future__ import annotations

import asyncio
import contextvars

import pytest

from checkid.protocols import eager
from tests.conftest import run

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("eager_test", default="unset")


async def immediate(value):
    return value


def test_a_coroutine_that_never_suspends_is_done_at_once_without_a_task():
    async def main():
        before = asyncio.all_tasks()
        future = eager.start(immediate(42))
        assert future.done() and future.result() == 42
        assert asyncio.all_tasks() == before
    run(main())


def test_an_error_raised_before_any_suspension_is_the_futures_exception():
    async def boom():
        raise ValueError("bad input")

    async def main():
        future = eager.start(boom())
        assert future.done()
        with pytest.raises(ValueError, match="bad input"):
            future.result()
    run(main())


def test_a_suspended_coroutine_continues_as_a_task_and_keeps_its_context():
    async def decide(gate):
        token = VAR.set("inside")
        try:
            got = await gate  # suspends: the rest runs in the Task
            await asyncio.sleep(0)  # a bare yield too
            return got, VAR.get()
        finally:
            VAR.reset(token)  # must be the Context that set it, or this raises

    async def main():
        gate = asyncio.get_running_loop().create_future()
        future = eager.start(decide(gate))
        assert not future.done() and VAR.get() == "unset"  # the caller's context is untouched
        gate.set_result("answer")
        assert await future == ("answer", "inside")
    run(main())


def test_an_exception_from_the_awaited_future_reaches_the_coroutine():
    async def decide(gate):
        try:
            await gate
        except KeyError:
            return "handled"

    async def main():
        gate = asyncio.get_running_loop().create_future()
        future = eager.start(decide(gate))
        gate.set_exception(KeyError("x"))
        assert await future == "handled"
    run(main())


def test_cancelling_the_task_cancels_the_coroutine_where_it_waits():
    seen = []

    async def decide(gate):
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled inside")
            raise

    async def main():
        gate = asyncio.get_running_loop().create_future()
        future = eager.start(decide(gate))
        await asyncio.sleep(0)
        future.cancel()
        with pytest.raises(asyncio.CancelledError):
            await future
        assert seen == ["cancelled inside"] and gate.cancelled()
    run(main())


def test_several_eager_starts_may_await_one_task_that_has_not_run_yet():
    """The reliability fuzz found it (three pipelined policy requests of one instance): the
    second and third await the first's Task before any of their own Tasks ran; the Task's
    blocking mark, cleared by the second's Task, must not make the third's await fail."""
    async def main():
        shared = asyncio.get_running_loop().create_future()

        async def waiter():
            return await shared

        async def follower(task):
            return await task

        first = eager.start(waiter())
        followers = [eager.start(follower(first)) for _ in range(3)]
        await asyncio.sleep(0)  # let every Task take up what it waits on
        shared.set_result("answer")
        return await asyncio.gather(first, *followers)
    assert run(main()) == ["answer"] * 4
