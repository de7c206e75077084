"""The Task-less coroutine driver the front door runs session steps with."""
from __future__ import annotations

import asyncio
import contextvars

from checkid.protocols.smtp import drive
from tests.conftest import run
from tests.protocols.fakes import until

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_a_step_that_never_waits_is_done_at_once_and_then_is_never_called():
    async def step():
        return 42

    async def go():
        called = []
        r = drive.start(step())
        r.then = called.append
        await asyncio.sleep(0)
        return r, called
    r, called = run(go())
    assert r.done() and r.result() == 42 and r.exception() is None and called == []


def test_a_waiting_step_resumes_when_its_future_is_set_and_tells_then_once():
    async def go():
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        seen = []

        async def step():
            a = await first
            b = await second
            return a + b
        r = drive.start(step())
        r.then = seen.append
        assert not r.done()
        first.set_result(1)
        for _ in range(10):
            await asyncio.sleep(0)
        assert not r.done()  # resumed, now on the second
        second.set_result(2)
        await until(lambda: seen)
        return r, seen
    r, seen = run(go())
    assert r.done() and r.result() == 3 and seen == [r]


def test_an_error_in_the_awaited_future_reaches_the_coroutine_and_its_own_error_is_the_outcome():
    async def go():
        future = asyncio.get_running_loop().create_future()
        caught = []

        async def step():
            try:
                await future
            except KeyError as e:
                caught.append(e)
                raise ValueError("after") from e
        r = drive.start(step())
        future.set_exception(KeyError("backend"))
        await until(r.done)
        return r, caught
    r, caught = run(go())
    assert len(caught) == 1 and isinstance(r.exception(), ValueError) and not r.cancelled()


def test_cancel_cancels_what_it_waits_on_and_throws_cancelled_into_it_without_then():
    async def go():
        inner = asyncio.get_running_loop().create_future()
        cleaned = []

        async def step():
            try:
                await inner
            finally:
                cleaned.append(True)
        r = drive.start(step())
        called = []
        r.then = called.append
        r.cancel()
        await asyncio.sleep(0)
        return r, inner, cleaned, called
    r, inner, cleaned, called = run(go())
    assert r.cancelled() and r.done() and inner.cancelled() and cleaned == [True] and called == []


def test_steps_run_in_one_copied_context_and_a_bare_yield_goes_on():
    async def go():
        future = asyncio.get_running_loop().create_future()

        async def step():
            VAR.set("inside")
            await asyncio.sleep(0)
            await future
            return VAR.get()
        r = drive.start(step())
        future.set_result(None)
        await until(r.done)
        return r
    r = run(go())
    assert r.result() == "inside" and VAR.get() == "unset"
