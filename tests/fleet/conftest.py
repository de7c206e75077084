"""A real redis-server on loopback (a free port, no persistence), started and stopped per test."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport.redisserver import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
