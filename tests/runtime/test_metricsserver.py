"""The metrics endpoint over real sockets, in-process: deadline per connection, connection cap."""
from __future__ import annotations

import asyncio
import logging

import pytest

from checkid.runtime import metricsserver
from checkid.runtime.metricsserver import Connections
from tests.conftest import run


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    return answer


async def wait_for_condition(check, what: str, seconds: float = 20.0) -> None:
    """Poll ``check`` until it holds; fail after ``seconds`` (a bound, not a measurement)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_metricsserver_answers_healthz_while_idle_connections_fill_the_cap(caplog):
    caplog.set_level(logging.WARNING, "checkid.runtime.metricsserver")
    conns = Connections(lambda: True, cap=8, timeout=60.0)

    async def scenario() -> tuple[bytes, list[bytes]]:
        server = await metricsserver.start("127.0.0.1", 0, conns)
        port = server.sockets[0].getsockname()[1]
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        await wait_for_condition(lambda: conns.counts[("metrics_connections_closed", "cap")] == 12,
                                 "the connections past the cap to close the oldest")
        health = await get(port, "/healthz")
        # the oldest idle connections were closed to make room: they read end of file
        ends = [await asyncio.wait_for(reader.read(), 20.0) for reader, _ in idle[:12]]
        for _, writer in idle:
            writer.close()
        server.close()
        return health, ends

    health, ends = run(scenario())
    assert health.startswith(b"HTTP/1.1 200 OK") and health.endswith(b"ok\n")
    assert ends == [b""] * 12
    assert conns.counts[("metrics_connections_closed", "cap")] == 13  # and one more for /healthz
    assert len(conns.open) <= conns.cap
    # rate-limited: one line for the whole flood
    lines = [r for r in caplog.records if "(the cap)" in r.getMessage()]
    assert len(lines) == 1


def test_metricsserver_closes_a_connection_that_says_nothing_at_its_deadline(caplog):
    caplog.set_level(logging.WARNING, "checkid.runtime.metricsserver")
    conns = Connections(lambda: True, timeout=0.05)

    async def scenario() -> bytes:
        server = await metricsserver.start("127.0.0.1", 0, conns)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        end = await asyncio.wait_for(reader.read(), 20.0)  # the server closes it
        writer.close()
        await wait_for_condition(lambda: not conns.open, "the connection to be forgotten")
        server.close()
        return end

    assert run(scenario()) == b""
    assert conns.counts[("metrics_connections_closed", "timeout")] == 1
    assert any("still open after 0.05 s" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("path, status", [("/healthz", b"200"), ("/nothing", b"404")])
def test_metricsserver_answers_within_the_limits(path, status):
    conns = Connections(lambda: True, cap=2, timeout=60.0)

    async def scenario() -> bytes:
        server = await metricsserver.start("127.0.0.1", 0, conns)
        answer = await get(server.sockets[0].getsockname()[1], path)
        server.close()
        return answer

    assert run(scenario()).split()[1] == status
    assert not conns.counts


def test_metricsserver_renders_once_for_a_flood_of_scrapes():
    """1,000 scrapes within a second cost one rendering of the merged metrics, not 1,000
    (issue 14: concurrent scrapes starved the workers); a later scrape sees fresh figures."""
    renders = []

    def render() -> tuple[bytes, str]:
        renders.append(None)
        return f"checkid_renders {len(renders)}\n".encode(), "text/plain"

    conns = Connections(lambda: True, render=render, render_seconds=1.0)
    bodies = {conns.exposition(100.0 + i / 1000)[0] for i in range(1000)}  # 1,000 within 1 s
    assert len(renders) == 1 and bodies == {b"checkid_renders 1\n"}
    assert conns.exposition(101.0)[0] == b"checkid_renders 2\n"


def test_metricsserver_serves_scrapes_from_the_cached_rendering():
    renders = []

    def render() -> tuple[bytes, str]:
        renders.append(None)
        return b"checkid_up 1\n", "text/plain; version=0.0.4"

    conns = Connections(lambda: True, render=render, render_seconds=3600.0)

    async def scenario() -> list[bytes]:
        server = await metricsserver.start("127.0.0.1", 0, conns)
        port = server.sockets[0].getsockname()[1]
        answers = await asyncio.gather(*(get(port, "/metrics") for _ in range(50)))
        server.close()
        return answers

    answers = run(scenario())
    assert len(renders) == 1
    assert all(a.startswith(b"HTTP/1.1 200 OK") and a.endswith(b"\r\n\r\ncheckid_up 1\n") for a in answers)
