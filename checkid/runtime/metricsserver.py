"""The metrics process: ``GET /metrics`` (all workers' metrics merged) and ``GET /healthz``.

It is a child of the master, not the master itself: the master forks workers for the
daemon's whole life and must hold no loop or thread at those forks (reference/runtime.md §0).
Like every process of the daemon it reopens its log file on SIGUSR1.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

import uvloop

from checkid.config import parse_listen
from checkid.exitcodes import ExitCode
from checkid.runtime import metrics
from checkid.runtime.logs import reopen_logs

log = logging.getLogger(__name__)

MAX_REQUEST = 8192


class HttpProtocol(asyncio.Protocol):
    """Enough HTTP/1.x for a scraper: one GET per connection, then close."""

    def __init__(self, healthy: Callable[[], bool]) -> None:
        self.healthy = healthy
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer and b"\n\n" not in self.buffer:
            if len(self.buffer) > MAX_REQUEST:
                self._reply(431, b"request too large\n")
            return
        parts = self.buffer.split(b"\n", 1)[0].split()
        method, path = (parts[0], parts[1].split(b"?")[0]) if len(parts) >= 2 else (b"", b"")
        if method not in (b"GET", b"HEAD"):
            self._reply(405, b"GET only\n")
        elif path == b"/metrics":
            try:
                body, ctype = metrics.render()
            except Exception as e:  # a broken metric file must not kill the endpoint
                log.exception("rendering metrics failed")
                self._reply(500, f"metrics unavailable: {e}\n".encode())
                return
            self._reply(200, body, ctype, head=method == b"HEAD")
        elif path == b"/healthz":
            ok = self.healthy()
            self._reply(200 if ok else 503, b"ok\n" if ok else b"master gone\n", head=method == b"HEAD")
        else:
            self._reply(404, b"not found\n")

    def _reply(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8", head: bool = False) -> None:
        assert self.transport is not None
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large", 500: "Error",
                  503: "Service Unavailable"}[status]
        self.transport.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                             + (b"" if head else body))
        self.transport.close()


async def serve(address: str, master_pid: int) -> int:
    _, host, port = parse_listen(address)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, reopen_logs)
    server = await loop.create_server(lambda: HttpProtocol(lambda: os.getppid() == master_pid), host, port,
                                      reuse_address=True)
    log.info("metrics on http://%s/metrics", address)
    while not stop.is_set():
        if os.getppid() != master_pid:
            break
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    server.close()
    return ExitCode.OK


def run(address: str, master_pid: int) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until its loop handles it
    try:
        return uvloop.run(serve(address, master_pid))
    except OSError as e:
        log.error("metrics server on %s: %s", address, e.strerror or e)
        return ExitCode.FAILURE
