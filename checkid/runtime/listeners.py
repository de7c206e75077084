"""Listening sockets, created once by the master and kept by it until the final stop
(``Master.stop`` closes its descriptors once the workers have their SIGTERM; each worker
closes its own once it stops accepting).

Every listener, TCP or unix, is ONE listening socket that all workers poll, with an
:class:`AcceptGate` beside it: shared memory in which each worker slot publishes how many
connections it has open on that listener. A worker woken by a new connection takes it only
if no live worker has fewer (:func:`may_accept`); otherwise it stops polling for
``DEFER_SECONDS`` at a time while the less-loaded worker takes it, and if that one does not
(stalled, or dead with a low count left behind: after a fifth of ``[server] accept_wait``;
whatever the others do: after ``accept_wait``, both counted afresh for each connection
another worker takes), the deferring worker takes it. Postfix's policy
clients and milter sessions hold few, long connections: per-worker ``SO_REUSEPORT`` sockets
(what this module did before) hash each one's 4-tuple to a worker regardless of load, so 16
connections over 2 workers split 11:5 or worse in 6 trials of 20, and the busier
worker's queueing sets the p99 long before the pair is at its maximum (issue 15;
``bench/split.py`` measures it, ``docs/architecture.md`` has the figures).

Because the master keeps the socket, a worker that dies leaves its queue to the others:
nothing queued is refused. Each slot gets its own descriptor for the socket (a ``dup``) so
that :meth:`Listener.for_slot` can carry the slot with it; they all name the one socket. A
unix listener's file is removed on exit when the master may (after a privilege drop it often
may not: the directory is root's); otherwise it stays, and the next start replaces it.

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
import mmap
import os
import pwd
import select
import socket
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable
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
#: a worker that leaves a connection to a less-loaded one stops polling this long, then looks
#: again. It stays in the others' comparison meanwhile: left out, it would let the other take
#: a whole queue of connections in one wake-up. So two workers may both wait, this long at most
DEFER_SECONDS = 0.002
#: the default of ``[server] accept_wait``: a connection still waiting this long after a
#: worker first left it (or after another worker last took one) is taken by that worker
#: whatever the others do: the bound on the wait ...
PATIENCE_SECONDS = 0.1
#: ... and after this fraction of it when no less-loaded worker was heard from since (its
#: loop stalled, or it died with a low count published)
STALL_FRACTION = 0.2
#: each acceptor republishes its count this often (closes are published no sooner) ...
REFRESH_SECONDS = 0.5
#: ... and a slot not published for this long is left out of the comparison: a dead worker
#: (or one never started) neither holds the others back nor is waited for
STALE_SECONDS = 2.0
#: int64 words per slot in an :class:`AcceptGate`
WORDS = 3


def may_accept(mine: int, others: Iterable[int]) -> bool:
    """The gate's rule: a worker with ``mine`` connections open takes a new one unless some
    other live worker has fewer. The least-loaded worker always may, so some worker always
    may; ties all may (whichever accept() wins)."""
    return all(mine <= other for other in others)


class AcceptGate:
    """Each worker slot's open connections on one listener, in anonymous shared memory the
    master maps before forking: a slot's worker writes only its own entry, reads the others.

    An entry is (count, when published, in ``clock`` nanoseconds, 0: absent; connections
    taken, ever). Entries are aligned 8-byte words, written and read whole; a value read while
    it changes is advisory only: the worst it does is one connection to the busier worker, or
    one deferral.
    """

    def __init__(self, slots: int, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.slots = slots
        self.clock = clock
        self._map = mmap.mmap(-1, 8 * WORDS * max(slots, 1))
        self._words = memoryview(self._map).cast("q")

    def publish(self, slot: int, count: int) -> int:
        """Slot ``slot`` has ``count`` connections open, as of now: the time written, which
        :meth:`withdraw` takes to tell this publication from a later one in the same slot."""
        now = self.clock()
        self._words[WORDS * slot] = count
        self._words[WORDS * slot + 1] = now
        return now

    def took(self, slot: int) -> None:
        """Slot ``slot`` took a connection (:meth:`taken_by_others` sees it)."""
        self._words[WORDS * slot + 2] += 1

    def taken_by_others(self, slot: int) -> int:
        """How many connections the other slots took, ever: a change means one was taken."""
        words = self._words
        return sum(words[WORDS * i + 2] for i in range(self.slots) if i != slot)

    def withdraw(self, slot: int, published: int | None = None) -> None:
        """Slot ``slot`` is not accepting (stopping, or paused): the others do not wait for it.
        With ``published`` (what :meth:`publish` returned), only if the entry still holds that
        publication: during a reload the retiring worker of a slot must not withdraw the entry
        its replacement already wrote."""
        if published is None or self._words[WORDS * slot + 1] == published:
            self._words[WORDS * slot + 1] = 0

    def others(self, slot: int) -> list[int]:
        """The counts of the other slots published within ``STALE_SECONDS``."""
        oldest = self.clock() - int(STALE_SECONDS * 1e9)
        words = self._words
        return [words[WORDS * i] for i in range(self.slots)
                if i != slot and words[WORDS * i + 1] > 0 and words[WORDS * i + 1] >= oldest]

    def heard_since(self, slot: int, since: int, below: int) -> bool:
        """Whether another slot with fewer than ``below`` connections published at or after
        ``since`` (``clock`` ns): its loop is running, so it is taking what it is woken for."""
        words = self._words
        return any(words[WORDS * i + 1] >= since and words[WORDS * i] < below
                   for i in range(self.slots) if i != slot)

    def may_accept(self, slot: int, count: int) -> bool:
        """Publish ``count`` for ``slot``; whether it may take a new connection now."""
        self.publish(slot, count)
        return may_accept(count, self.others(slot))


class SlotSocket(socket.socket):
    """A descriptor of a listener's one socket, for one worker slot: the acceptor built on it
    learns the gate and the slot from it, so the worker's own code need not pass them."""

    __slots__ = ("gate", "slot")

    def __init__(self, shared: socket.socket, gate: AcceptGate, slot: int) -> None:
        super().__init__(shared.family, shared.type, shared.proto, os.dup(shared.fileno()))
        self.setblocking(False)
        self.gate = gate
        self.slot = slot


@dataclass
class Listener:
    config: ListenConfig
    #: one descriptor per worker slot, all of the one listening socket every worker polls
    sockets: list[socket.socket]
    unix_path: str = ""

    def for_slot(self, slot: int) -> socket.socket:
        return self.sockets[slot]

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
    """Bind ``config``'s address: one socket, a descriptor and a gate entry for each of
    ``slots`` workers. :raises ConfigError: naming the address that failed"""
    kind, host, port = parse_listen(config.address)
    try:
        shared = _unix(host, config) if kind == "unix" else _tcp(host, port)
    except OSError as e:
        raise ConfigError(f"listen {config.address}: {e.strerror or e}") from None
    with shared:  # each slot's descriptor keeps the socket open
        gate = AcceptGate(slots)
        return Listener(config, [SlotSocket(shared, gate, slot) for slot in range(max(slots, 1))],
                        host if kind == "unix" else "")


def _tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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

    On a :class:`SlotSocket` the acceptor is gated: before each accept it publishes its count
    (``open_count()`` plus connections being handed over) and, when a live worker has fewer,
    leaves the connection to it (counted as ``("accept_wakeups", label, "deferred")``). A
    wake-up that finds the queue empty, another worker having taken the connection, counts as
    ``("accept_wakeups", label, "empty")``: the price of every worker polling one socket.

    :param accept_wait: ``[server] accept_wait``: the longest a connection at the head of the
        queue is left to a less-loaded worker (a fifth of it when none is heard from); 0: not
        gated, any worker takes any connection
    :param max_connections: the cap on this listener's open connections (0: none), of which
        ``open_count()`` says how many there are (connections being handed over count too)
    :param label: the front-end name in the refusal's counter and log line
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 factory: Callable[[], asyncio.BaseProtocol], counts: Counter[tuple[str, ...]],
                 retry: float = ACCEPT_RETRY_SECONDS, max_connections: int = 0,
                 open_count: Callable[[], int] | None = None, label: str = "",
                 accept_wait: float = PATIENCE_SECONDS) -> None:
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
        self.gate: AcceptGate | None = getattr(sock, "gate", None) if accept_wait > 0 else None
        self.slot: int = getattr(sock, "slot", 0)
        self.patience = accept_wait
        self.stall = accept_wait * STALL_FRACTION
        self._deferred: asyncio.TimerHandle | None = None
        self._deferred_at = 0
        self._taken_by_others = 0
        self._deferrals = 0
        self._refresh: asyncio.TimerHandle | None = None
        #: what this acceptor last wrote in its gate entry (0: nothing)
        self._published = 0
        # poll, not select: a worker of many slots and listeners holds descriptors >= 1024
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)

    def start(self) -> None:
        """Start (or resume) accepting."""
        if self._resume is not None:
            self._resume.cancel()  # resumed early (as when closed and restarted): one timer at most
            self._resume = None
        if not self.closed and not self._reading:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            self._reading = True
            if self.gate is not None:
                self._republish()

    def close(self) -> None:
        """Stop accepting; the listening socket stays open."""
        self.closed = True
        self._pause()
        for timer in (self._resume, self._deferred, self._refresh):
            if timer is not None:
                timer.cancel()
        self._resume = self._deferred = self._refresh = None

    def _pause(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False
        if self.gate is not None:
            self.gate.withdraw(self.slot, self._published)

    def _publish(self) -> None:
        assert self.gate is not None
        self._published = self.gate.publish(self.slot, self._load())

    def _load(self) -> int:
        return self.open_count() + len(self._tasks)

    def _republish(self) -> None:
        """Publish the count (closes lower it unseen otherwise) and that this slot is live."""
        assert self.gate is not None
        if self._refresh is not None:
            self._refresh.cancel()
        self._refresh = None
        if self._reading or self._deferred is not None:
            self._publish()
            self._refresh = self.loop.call_later(REFRESH_SECONDS, self._republish)

    def _defer(self) -> None:
        """Leave the waiting connection to a less-loaded worker for ``DEFER_SECONDS``."""
        assert self.gate is not None
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False
        if not self._deferrals:
            self.counts[("accept_wakeups", self.label, "deferred")] += 1
            self._wait_afresh()
        self._deferrals += 1
        self._deferred = self.loop.call_later(DEFER_SECONDS, self._after_deferring)

    def _wait_afresh(self) -> None:
        """The connection at the head of the queue starts its wait now."""
        assert self.gate is not None
        self._deferred_at = self.gate.clock()
        self._taken_by_others = self.gate.taken_by_others(self.slot)

    def _after_deferring(self) -> None:
        self._deferred = None
        try:
            if not self._poller.poll(0):
                self._deferrals = 0  # another worker took it: the next wait starts afresh
        finally:
            self.start()  # a connection still waiting wakes this loop again, and the gate decides

    def _gated(self) -> bool:
        """Whether to leave the waiting connection to another worker. Not when this one left
        it a fifth of ``accept_wait`` ago and no less-loaded worker was heard from since
        (stalled, or dead with a low count left behind), nor after ``accept_wait``: a
        connection waits a bounded time, whatever the others do. Both count from the last
        connection another worker took, if it took one since: each connection's own wait."""
        assert self.gate is not None
        load = self._load()
        self._published = self.gate.publish(self.slot, load)
        if may_accept(load, self.gate.others(self.slot)):
            return False
        if not self._deferrals:
            return True
        if self.gate.taken_by_others(self.slot) != self._taken_by_others:
            self._wait_afresh()  # the one waiting before was taken; this one waits afresh
            return True
        waited = (self.gate.clock() - self._deferred_at) / 1e9
        if waited >= self.patience:
            return False
        return waited < self.stall or self.gate.heard_since(self.slot, self._deferred_at, load)

    def _accept(self) -> None:
        for i in range(ACCEPT_BATCH):
            if self.gate is not None and self._gated():
                if i and not self._poller.poll(0):
                    return  # the queue is empty after the last taken: nothing to leave
                self._defer()
                return
            try:
                conn, _peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                self._deferrals = 0
                if i == 0:
                    self.counts[("accept_wakeups", self.label, "empty")] += 1
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
            if self.gate is not None:
                self._deferrals = 0
                self.gate.took(self.slot)
                self._publish()

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
            if self._deferred is not None:  # its start() would end the pause early
                self._deferred.cancel()
                self._deferred = None
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
