"""Listening sockets, in-process."""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
from collections import Counter
from pathlib import Path

from checkid.config import ListenConfig
from checkid.runtime import listeners
from tests.conftest import run


def test_a_unix_listener_closes_even_when_its_file_cannot_be_removed(tmp_path: Path) -> None:
    path = tmp_path / "policy.sock"
    listener = listeners.bind(ListenConfig(protocol="policy", address=f"unix:{path}"), 2)
    os.unlink(path)
    path.mkdir()  # unlink() now fails with an OSError other than FileNotFoundError
    listener.close()
    assert all(s.fileno() == -1 for s in listener.sockets) and path.is_dir()


def test_a_unix_listener_removes_its_file_when_it_may(tmp_path: Path) -> None:
    path = tmp_path / "policy.sock"
    listener = listeners.bind(ListenConfig(protocol="policy", address=f"unix:{path}"), 2)
    assert len(listener.sockets) == 2 and all(s.family == socket.AF_UNIX for s in listener.sockets)
    listener.close()
    assert not path.exists()


class Greeter(asyncio.Protocol):
    """Writes ``hi`` to every connection it is given, and counts them."""

    made = 0
    lost = 0
    transports: list[asyncio.BaseTransport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Greeter.made += 1
        Greeter.transports.append(transport)
        transport.write(b"hi")  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        Greeter.lost += 1


def test_acceptor_pauses_at_the_descriptor_limit_and_serves_the_queue_later(caplog) -> None:
    """At the descriptor limit the connections wait in the kernel's queue and are served once
    descriptors are free, logged and counted; libuv would accept each one and close it."""
    caplog.set_level(logging.ERROR, "checkid.runtime.listeners")
    Greeter.made = Greeter.lost = 0
    counts: Counter[tuple[str, ...]] = Counter()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    lsock.setblocking(False)
    clients = [socket.create_connection(lsock.getsockname()) for _ in range(10)]  # queued by the kernel
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def scenario() -> None:
        acceptor = listeners.Acceptor(asyncio.get_running_loop(), lsock, Greeter, counts, retry=0.01)
        # use up every descriptor number but two: fill every hole up to the highest open
        # descriptor (listing /proc/self/fd opens one more, so the highest is not known exactly
        # and the filling goes one past it), then allow exactly two numbers above
        top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        fillers = []
        while (fd := os.open(os.devnull, os.O_RDONLY)) < top:
            fillers.append(fd)
        fillers.append(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(fillers) + 3, hard))
        try:
            acceptor.start()
            await poll(lambda: counts[("accept_errors", "EMFILE")] >= 1, "accept to hit the limit")
            at_the_limit = Greeter.made
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for fd in fillers:
                os.close(fd)
        try:
            assert at_the_limit <= 2
            await poll(lambda: Greeter.made == 10, "the queued connections to be served")
        finally:
            acceptor.close()
            for transport in Greeter.transports:
                transport.close()
            await poll(lambda: Greeter.lost == Greeter.made, "the connections to close")
            Greeter.transports.clear()

    try:
        run(scenario())
        for client in clients:
            client.settimeout(20.0)
            assert client.recv(2) == b"hi"  # none was accepted and closed
    finally:
        for client in clients:
            client.close()
        lsock.close()
    lines = [r for r in caplog.records if "not accepting for 0.01 s" in r.getMessage()]
    assert 1 <= len(lines) <= counts[("accept_errors", "EMFILE")]


async def poll(check, what: str, seconds: float = 20.0) -> None:
    """Wait until ``check()`` holds; fail after ``seconds`` (a bound, not a measurement)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def test_acceptor_at_its_connection_cap_closes_new_connections_at_once_logged_and_counted(caplog) -> None:
    """At ``max_connections`` a new connection is closed at once (its client tries elsewhere),
    counted and logged once per interval; those under the cap are served."""
    caplog.set_level(logging.WARNING, "checkid.runtime.listeners")
    Greeter.made = Greeter.lost = 0
    counts: Counter[tuple[str, ...]] = Counter()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    lsock.setblocking(False)

    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        acceptor = listeners.Acceptor(loop, lsock, Greeter, counts, max_connections=2,
                                      open_count=lambda: Greeter.made - Greeter.lost, label="policy")
        acceptor.start()
        got, writers = [], []
        try:
            for _ in range(5):
                reader, writer = await asyncio.open_connection(*lsock.getsockname())
                writers.append(writer)
                got.append(await asyncio.wait_for(reader.read(2), 20.0))
        finally:
            for writer in writers:
                writer.close()
            acceptor.close()
            for transport in Greeter.transports:
                transport.close()
            await poll(lambda: Greeter.lost == Greeter.made, "the connections to close")
            Greeter.transports.clear()
        return got

    try:
        got = run(scenario())
    finally:
        lsock.close()
    assert got == [b"hi", b"hi", b"", b"", b""] and Greeter.made == 2
    assert counts[("connections_refused", "policy", "max_connections")] == 3
    assert len([r for r in caplog.records if "max_connections cap" in r.getMessage()]) == 1
