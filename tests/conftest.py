"""Shared fixtures: the test DNS server on loopback and engines configured to use it."""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import settings

from checkid.engine.engine import Engine
from testsupport.config import base_config
from testsupport.dnsserver import TestDnsServer, queries_asked

__all__ = ["base_config", "run", "split"]

# No test depends on the machine's speed: hypothesis's default 200 ms per example fails on a
# busy CI machine (a PROXY round trip once took 264 ms while other suites ran).
settings.register_profile("checkid", deadline=None)
settings.load_profile("checkid")

ZONES = Path(__file__).resolve().parents[1] / "testsupport" / "zones"
T = TypeVar("T")


@pytest.fixture(scope="session")
def dns_server() -> Iterator[TestDnsServer]:
    with TestDnsServer(ZONES) as server:
        yield server


@pytest.fixture
def dns(dns_server: TestDnsServer) -> Iterator[TestDnsServer]:
    """The test DNS server with counts reset and no faults, restored after the test."""
    # a query an earlier test sent just before its loop ended may still wait in the server's
    # socket: one round trip behind it (answered in order) lets it be counted before the reset
    queries_asked(dns_server.address)
    dns_server.reset_counts()
    dns_server.clear_faults()
    yield dns_server
    dns_server.clear_faults()


@pytest.fixture
def make_engine(dns: TestDnsServer) -> Callable[..., Engine]:
    def make(**sections: Any) -> Engine:
        return Engine(base_config(dns, **sections))
    return make


#: no single coroutine of a test may run longer than this
RUN_SECONDS = 60.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine on a fresh uvloop loop, as a worker would, bounded in time."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(coro, RUN_SECONDS))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given points (taken modulo its length): for split-anywhere tests."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[i:j] for i, j in zip([0] + points, points + [len(data)])]
