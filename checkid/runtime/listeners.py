"""Listening sockets, created once by the master and kept by it for the daemon's life.

A TCP listener gets one ``SO_REUSEPORT`` socket per worker slot: the kernel spreads new
connections over them evenly, and because the master keeps every socket open, a worker that
dies leaves its slot's queue intact for the worker that takes the slot over: nothing queued
is refused. A unix-socket listener is one socket shared by all workers (the kernel does not
balance AF_UNIX across reuseport sockets). Its file is removed on exit when the master may
(after a privilege drop it often may not: the directory is root's); otherwise it stays, and
the next start replaces it.

A worker accepts with an :class:`Acceptor`, not the event loop's own server: at the
descriptor limit libuv (under uvloop) accepts each waiting connection and closes it at once,
with nothing logged or counted. The acceptor instead stops accepting for a moment when
``accept()`` fails for want of descriptors or memory, logs it (rate-limited) and counts it
(``accept_errors`` by error): the connections wait in the kernel's queue until descriptors
are free again, and are served then. With ``max_connections``, a connection accepted while the
listener has that many open in this worker is closed at once, logged (rate-limited) and
counted (``connections_refused`` by front-end, reason ``max_connections``): the client tries
another worker or server at once, rather than waiting in a queue that is not moving.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from checkid.config import ListenConfig, parse_listen
from checkid.errors import ConfigError
from checkid.throttle import LogThrottle, left_out

log = logging.getLogger(__name__)

BACKLOG = 1024
#: connections taken per wake-up of a listening socket (asyncio's own batch is its backlog,
#: 100): a flood of connects cannot keep the loop in accept() away from its connections
ACCEPT_BATCH = 100
#: accepting pauses this long when accept() fails for want of resources; a second is
#: asyncio's own pause, and the kernel keeps the waiting connections meanwhile
ACCEPT_RETRY_SECONDS = 1.0
#: accept() errors that mean "no descriptor or memory now", not a broken listener
RESOURCE_ERRORS = {errno.EMFILE: "EMFILE", errno.ENFILE: "ENFILE", errno.ENOBUFS: "ENOBUFS",
                   errno.ENOMEM: "ENOMEM"}


@dataclass
class Listener:
    config: ListenConfig
    #: TCP: one socket per worker slot; unix: a single shared socket
    sockets: list[socket.socket]
    unix_path: str = ""

    def for_slot(self, slot: int) -> socket.socket:
        return self.sockets[slot] if len(self.sockets) > 1 else self.sockets[0]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.info("leaving %s for the next start to replace: %s", self.unix_path, e.strerror or e)


def bind(config: ListenConfig, slots: int) -> Listener:
    """Bind ``config``'s address. :raises ConfigError: naming the address that failed"""
    kind, host, port = parse_listen(config.address)
    try:
        if kind == "unix":
            return Listener(config, [_unix(host, config)], host)
        return Listener(config, [_tcp(host, port) for _ in range(slots)])
    except OSError as e:
        raise ConfigError(f"listen {config.address}: {e.strerror or e}") from None


def _tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _unix(path: str, config: ListenConfig) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left by a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, int(config.mode, 8))
        if config.owner or config.group:
            uid = pwd.getpwnam(config.owner).pw_uid if config.owner else -1
            gid = grp.getgrnam(config.group).gr_gid if config.group else -1
            os.chown(path, uid, gid)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except (OSError, KeyError) as e:
        sock.close()
        if isinstance(e, KeyError):
            raise OSError(f"unknown user or group {e}") from None
        raise
    return sock


class Acceptor:
    """Accepts connections on one listening socket for one worker's event loop.

    Each connection goes to ``factory``'s protocol through ``loop.connect_accepted_socket``.
    When accept() fails with a resource error, accepting pauses for ``retry`` seconds (the
    connections stay queued in the kernel), logged at most once per throttle interval and
    counted as ``("accept_errors", "EMFILE")`` (and so on) in ``counts``. :meth:`close` stops
    accepting and leaves the socket open: the master keeps it and its queue.

    :param max_connections: the cap on this listener's open connections (0: none), of which
        ``open_count()`` says how many there are (connections being handed over count too)
    :param label: the front-end name in the refusal's counter and log line
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 factory: Callable[[], asyncio.BaseProtocol], counts: Counter[tuple[str, ...]],
                 retry: float = ACCEPT_RETRY_SECONDS, max_connections: int = 0,
                 open_count: Callable[[], int] | None = None, label: str = "") -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.counts = counts
        self.retry = retry
        self.max_connections = max_connections
        self.open_count = open_count or (lambda: 0)
        self.label = label
        self.closed = False
        self._reading = False
        self._resume: asyncio.TimerHandle | None = None
        self._throttle = LogThrottle()
        self._refusals = LogThrottle()
        self._tasks: set[asyncio.Task[object]] = set()

    def start(self) -> None:
        """Start (or resume) accepting."""
        self._resume = None
        if not self.closed and not self._reading:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            self._reading = True

    def close(self) -> None:
        """Stop accepting; the listening socket stays open."""
        self.closed = True
        self._pause()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None

    def _pause(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as e:
                name = RESOURCE_ERRORS.get(e.errno or 0)
                if name is None:
                    raise
                self._out_of_resources(name, e)
                return
            if self.max_connections and self.open_count() + len(self._tasks) >= self.max_connections:
                self._refuse(conn)
                continue
            conn.setblocking(False)
            task: asyncio.Task[object] = self.loop.create_task(self._hand_over(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _refuse(self, conn: socket.socket) -> None:
        """At the cap: close the new connection at once; count it, log (rate-limited)."""
        conn.close()
        self.counts[("connections_refused", self.label, "max_connections")] += 1
        suppressed = self._refusals.ready(self.loop.time())
        if suppressed is not None:
            log.warning("%s on %s: %d connections open, the max_connections cap; a new one closed at once%s",
                        self.label, _sockname(self.sock), self.max_connections,
                        left_out(suppressed))

    def _out_of_resources(self, name: str, error: OSError, pause: bool = True) -> None:
        """Count and log (rate-limited) a failed accept; pause accepting for ``retry`` s."""
        self.counts[("accept_errors", name)] += 1
        suppressed = self._throttle.ready(self.loop.time())
        if suppressed is not None:
            log.error("accept on %s: %s; %s%s", _sockname(self.sock), error.strerror or error,
                      f"not accepting for {self.retry:g} s, the connections wait in the queue" if pause
                      else "connection closed",
                      left_out(suppressed))
        if pause and not self.closed:
            self._pause()
            if self._resume is None:
                self._resume = self.loop.call_later(self.retry, self.start)

    async def _hand_over(self, conn: socket.socket) -> object:
        try:
            return await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError as e:
            conn.close()
            name = RESOURCE_ERRORS.get(e.errno or 0)
            self._out_of_resources(name or "other", e, pause=name is not None)
            return None


def _sockname(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    return name if isinstance(name, str) else f"{name[0]}:{name[1]}"
