"""Fixtures the micro-benchmarks share: the test DNS server on loopback and a uvloop loop,
one of each per module."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from testsupport.dnsserver import TestDnsServer

ZONES = Path(__file__).resolve().parent.parent / "testsupport" / "zones"


@pytest.fixture(scope="module")
def server() -> Iterator[TestDnsServer]:
    with TestDnsServer(ZONES) as s:
        yield s


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()
