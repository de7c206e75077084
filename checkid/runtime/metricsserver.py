"""The metrics process: ``GET /metrics`` (all workers' metrics merged) and ``GET /healthz``.

It is a child of the master, not the master itself: the master forks workers for the
daemon's whole life and must hold no loop or thread at those forks (reference/runtime.md §0).
Like every process of the daemon it reopens its log file on SIGUSR1.

A scraper connects, sends one request and reads the answer, so every connection has a
deadline (``REQUEST_SECONDS`` from its accept) and there are at most ``MAX_CONNECTIONS``
at once. At the cap the oldest connection is closed to make room: clients that connect and
say nothing cannot hold the endpoint, and a fresh ``/healthz`` is answered even during such a
flood. Each closing is counted (``metrics_connections_closed`` by reason) and logged, at most
one line per kind every few seconds (:mod:`checkid.throttle`).

``/healthz`` is what a load balancer checks (docs/fleet.md): 200 "ok" while the master lives
and a worker serves; 503 "master gone", "workers gone" (none serving: all crashed, or not yet
started) or "draining" (the master got SIGTERM and leaves the pool for ``[server]
leave_pool`` seconds before its workers stop). The master says which in one byte of a shared
anonymous mapping (:class:`Health`) it writes on each pass and that this process, forked
from it, reads on each check: no signal, file or message between them.

Scrapes must not take CPU from the workers' decisions (1,000 concurrent scrapes once raised
decision p99 from 0.27 to 3.1 ms): the merged exposition is rendered at most once every
``RENDER_SECONDS`` and served from that copy meanwhile, so a flood of scrapes costs one
render a second, and the process runs at a lower CPU priority (``NICE``) than the workers.
"""
from __future__ import annotations

import asyncio
import logging
import mmap
import os
import signal
from collections import Counter
from collections.abc import Callable

import uvloop

from checkid.config import parse_listen
from checkid.exitcodes import ExitCode
from checkid.runtime import metrics
from checkid.runtime.logs import reopen_logs
from checkid.throttle import LogThrottle, left_out

log = logging.getLogger(__name__)

#: a GET with its headers; scrapers send a few hundred bytes
MAX_REQUEST = 8192
#: from accept to the answer written and read: a scrape of the merged metrics takes
#: milliseconds, and Prometheus's own scrape timeout defaults to 10 s
REQUEST_SECONDS = 10.0
#: connections open at once: a few scrapers and health checks need a handful; far below a
#: 1024 descriptor limit, so that the process always has descriptors left to accept with
MAX_CONNECTIONS = 64
#: seconds one rendering of the merged metrics is served: Prometheus scrapes every 15 s or
#: more, so a second-old copy loses nothing, and any number of scrapes costs one render a second
RENDER_SECONDS = 1.0
#: added to the process's nice value: under CPU contention the workers' decisions go first
NICE = 10


class Health:
    """The master's word on this host, one byte in a ``MAP_SHARED`` anonymous mapping: made
    by the master before it forks the metrics process, so both see the same page."""

    OK = 0
    #: no worker serves
    NO_WORKERS = 1
    #: SIGTERM: leaving the pool, then draining
    DRAINING = 2
    #: the 503 body of each state
    REASONS = {NO_WORKERS: "workers gone", DRAINING: "draining"}

    def __init__(self) -> None:
        self.map = mmap.mmap(-1, mmap.PAGESIZE)
        self.map[0] = self.NO_WORKERS  # until a worker says it serves

    def set(self, state: int) -> None:
        self.map[0] = state

    def get(self) -> int:
        return self.map[0]


def health_check(health: Health, master_pid: int, getppid: Callable[[], int] = os.getppid) -> Callable[[], str]:
    """``/healthz``'s verdict for the metrics process: "" when healthy, else why not."""
    def check() -> str:
        if getppid() != master_pid:
            return "master gone"
        return Health.REASONS.get(health.get(), "")
    return check


class Connections:
    """The endpoint's open connections (oldest first), the cap and the counts."""

    def __init__(self, healthy: Callable[[], bool | str], counts: Counter[tuple[str, ...]] | None = None,
                 timeout: float = REQUEST_SECONDS, cap: int = MAX_CONNECTIONS,
                 render: Callable[[], tuple[bytes, str]] = metrics.render,
                 render_seconds: float = RENDER_SECONDS) -> None:
        """:param healthy: what ``/healthz`` reports: True (or "") when healthy; False (a
            503 "master gone") or the 503's reason when not
        :param counts: ``("metrics_connections_closed", reason)`` counters, bumped here
        :param timeout: seconds a connection may stay open
        :param cap: connections open at once
        :param render: the merged exposition, ``(body, content type)``
        :param render_seconds: how long one rendering is served"""
        self.healthy = healthy
        self.render = render
        self.render_seconds = render_seconds
        #: the last rendering and when (loop time) it was made; None before the first
        self._rendered: tuple[float, bytes, str] | None = None
        self.counts: Counter[tuple[str, ...]] = counts if counts is not None else Counter()
        self.timeout = timeout
        self.cap = cap
        #: a dict for its order: the first key is the oldest connection
        self.open: dict[HttpProtocol, None] = {}
        self._throttles = {reason: LogThrottle() for reason in ("cap", "timeout", "too_large")}

    def closing(self, reason: str, now: float, message: str) -> None:
        """Count one connection closed for ``reason`` and log it, rate-limited."""
        self.counts[("metrics_connections_closed", reason)] += 1
        suppressed = self._throttles[reason].ready(now)
        if suppressed is not None:
            log.warning("metrics endpoint: %s%s", message,
                        left_out(suppressed))

    def exposition(self, now: float) -> tuple[bytes, str]:
        """The merged metrics, rendered again only when the last rendering is
        ``render_seconds`` old. :raises Exception: whatever rendering raised (nothing cached)"""
        if self._rendered is None or now - self._rendered[0] >= self.render_seconds:
            body, ctype = self.render()
            self._rendered = (now, body, ctype)
        return self._rendered[1], self._rendered[2]

    def protocol(self) -> HttpProtocol:
        return HttpProtocol(self)


class HttpProtocol(asyncio.Protocol):
    """Enough HTTP/1.x for a scraper: one GET per connection, then close."""

    def __init__(self, connections: Connections) -> None:
        self.connections = connections
        self.healthy = connections.healthy
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        conns = self.connections
        loop = asyncio.get_running_loop()
        if len(conns.open) >= conns.cap:
            oldest = next(iter(conns.open))
            conns.closing("cap", loop.time(), f"{len(conns.open)} connections open (the cap); closing the oldest")
            oldest.abort()
        conns.open[self] = None
        self.timer = loop.call_later(conns.timeout, self._timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.open.pop(self, None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def abort(self) -> None:
        """Close at once, dropping what is unsent, and stop counting this connection as open."""
        self.connections.open.pop(self, None)
        if self.transport is not None:
            self.transport.abort()

    def _timed_out(self) -> None:
        self.timer = None
        self.connections.closing("timeout", asyncio.get_running_loop().time(),
                                 f"a connection still open after {self.connections.timeout:g} s; closing it")
        self.abort()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer and b"\n\n" not in self.buffer:
            if len(self.buffer) > MAX_REQUEST:
                self.connections.closing("too_large", asyncio.get_running_loop().time(),
                                         f"a request longer than {MAX_REQUEST} bytes; answering 431")
                self._reply(431, b"request too large\n")
            return
        parts = self.buffer.split(b"\n", 1)[0].split()
        method, path = (parts[0], parts[1].split(b"?")[0]) if len(parts) >= 2 else (b"", b"")
        if method not in (b"GET", b"HEAD"):
            self._reply(405, b"GET only\n")
        elif path == b"/metrics":
            try:
                body, ctype = self.connections.exposition(asyncio.get_running_loop().time())
            except Exception as e:  # a broken metric file must not kill the endpoint
                log.exception("rendering metrics failed")
                self._reply(500, f"metrics unavailable: {e}\n".encode())
                return
            self._reply(200, body, ctype, head=method == b"HEAD")
        elif path == b"/healthz":
            verdict = self.healthy()
            if verdict is True or verdict == "":
                self._reply(200, b"ok\n", head=method == b"HEAD")
            else:
                reason = verdict if isinstance(verdict, str) else "master gone"
                self._reply(503, f"{reason}\n".encode(), head=method == b"HEAD")
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


async def start(host: str, port: int, connections: Connections) -> asyncio.Server:
    """Listen on ``host``:``port`` for scrapes, served under ``connections``' limits."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(connections.protocol, host, port, reuse_address=True)


async def serve(address: str, master_pid: int, health: Health) -> int:
    _, host, port = parse_listen(address)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, reopen_logs)
    exporter = metrics.Exporter()
    connections = Connections(health_check(health, master_pid))
    server = await start(host, port, connections)
    log.info("metrics on http://%s/metrics", address)
    try:  # once listening: its start-up is not slowed, its scrapes are
        os.nice(NICE)
    except OSError as e:  # a sandbox may forbid it: the render cache still bounds the cost
        log.warning("metrics process: cannot lower its CPU priority: %s", e.strerror or e)
    while not stop.is_set():
        if os.getppid() != master_pid:
            break
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
        exporter.sync(connections.counts)
    server.close()
    return ExitCode.OK


def run(address: str, master_pid: int, health: Health) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until its loop handles it
    try:
        return uvloop.run(serve(address, master_pid, health))
    except OSError as e:
        log.error("metrics server on %s: %s", address, e.strerror or e)
        return ExitCode.FAILURE
