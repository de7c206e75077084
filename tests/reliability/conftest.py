"""Fixtures of the reliability suite: one daemon per module (:mod:`tests.reliability.daemon`)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from testsupport.dnsserver import TestDnsServer
from tests.reliability.daemon import Daemon, running


@pytest.fixture(scope="module")
def daemon(dns_server: TestDnsServer) -> Iterator[Daemon]:
    """``checkid serve`` with all four protocols on the test DNS server, for the module."""
    with running(dns_server) as d:
        yield d
