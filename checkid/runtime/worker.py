"""A worker process: its own uvloop loop, engine, resolver and cache handles, serving the
listeners it inherited from the master.

Everything that owns a thread, a loop or an LMDB handle is created here, after the fork.
The worker ticks from inside its event loop: a heartbeat the master watches (a stalled
loop stops ticking: the master sends SIGABRT, whose traceback ``faulthandler`` writes into
the log, then replaces it), a parent check (the worker leaves if the master is gone), the
policy file check (an edit is live within ``policy.reload_interval``), the cache flush
requests (``checkid cache flush``: the named entries leave its memory layer), and the
metrics sync. Its heartbeat file also holds its status (:mod:`checkid.runtime.control`):
serving or not, the last flush applied, its memory layer's size. A refused policy edit is
counted here and logged by the master, once for all workers.
SIGTERM/SIGINT: stop accepting and close its descriptor of each listening socket (the
master closes its own on a final stop, so new connections are refused, not queued), let
each connection finish its work within ``server.grace`` (an idle one closes at once), exit 0.
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import uvloop

from checkid.engine.dns.cache import Cache, LayeredCache, MemoryCache, mentions
from checkid.config import Config, ListenConfig
from checkid.engine.engine import Engine
from checkid.errors import PolicyError
from checkid.exitcodes import ExitCode
from checkid.protocols.base import ServerState
from checkid.runtime.control import FlushFollower, WorkerStatus, encode_status
from checkid.runtime.listeners import Acceptor
from checkid.runtime.logs import enable_faulthandler, reopen_logs

log = logging.getLogger(__name__)

#: seconds between LMDB sweeps of expired entries (done by slot 0 only)
SWEEP_SECONDS = 60.0
#: seconds between ``malloc_trim(0)`` calls. glibc returns freed heap to the kernel only
#: from the top of its heap; what a burst freed below live blocks (a 10 MB message's
#: buffers, a flood of connections) stays in the worker's RSS until trimmed. A trim of a
#: worker with a full memory cache costs about 0.4 ms of CPU, then tens of microseconds
TRIM_SECONDS = 30.0


def heap_trimmer() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)`` (returns 1 when it gave memory back), or None where the C
    library has none (musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return functools.partial(trim, 0)


@dataclass
class WorkerSpec:
    slot: int
    config: Config
    #: the sockets this worker serves: (listener config, socket)
    sockets: list[tuple[ListenConfig, socket.socket]]
    #: fd of the unlinked heartbeat file the master watches
    heartbeat_fd: int
    master_pid: int
    cache_path: str
    #: the last good policy the master knows: what the engine runs when the file does not load
    policy_source: bytes | None = None
    #: where the master and the commands keep their records (cache flush requests)
    state_dir: str = ""


def boot_signals() -> None:
    """The master's handlers are not the worker's. A log rotation (SIGUSR1) or a reload
    (SIGHUP) while the worker boots must not kill it, as SIG_DFL would: ignored until its
    loop takes them over."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def run(spec: WorkerSpec) -> int:
    """The worker's whole life, in the forked child. Returns its exit code."""
    boot_signals()
    enable_faulthandler()
    worker = Worker(spec)
    try:
        return uvloop.run(worker.serve())
    except Exception:
        log.exception("worker %d failed", spec.slot)
        # only a worker that never served halts the master; one that served is replaced
        return ExitCode.FAILURE if worker.serving else ExitCode.CANNOT_START


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.stop = asyncio.Event()
        self.serving = False
        #: the cache flush requests, read from the state directory the master names
        self.flushes = FlushFollower(spec.state_dir) if spec.state_dir else None

    def _cache(self) -> Cache:
        config = self.spec.config
        self.memory = memory = MemoryCache(config.dns.cache_size)
        if not config.cache.shared:
            return memory
        from checkid.runtime.lmdbcache import LmdbCache

        self.shared = LmdbCache(self.spec.cache_path, config.cache.size_mb)
        return LayeredCache(memory, self.shared)

    async def serve(self) -> int:
        spec, config = self.spec, self.spec.config
        from checkid.protocols.registry import frontend, protocol_factory
        from checkid.runtime.metrics import Exporter

        try:
            self.exporter = Exporter()
            self.engine = engine = Engine(config, cache=self._cache(), observer=self.exporter,
                                          policy_source=spec.policy_source)
        except Exception as e:  # a configuration the master accepted should boot: report, do not loop
            log.error("worker %d cannot start: %s", spec.slot, e)
            return ExitCode.CANNOT_START
        self.state = state = ServerState(stats=self._stats, max_unfinished_bytes=config.server.max_unfinished_bytes)
        loop = asyncio.get_running_loop()
        # our own accept loop, not loop.create_server: at the descriptor limit libuv accepts
        # and closes queued connections unseen; the Acceptor pauses, logs and counts instead
        acceptors = []
        for listen, sock in spec.sockets:
            acceptor = Acceptor(loop, sock, protocol_factory(engine, state, config, listen), state.counts,
                                max_connections=config.server.max_connections,
                                open_count=functools.partial(state.by_listener.__getitem__, listen),
                                label=frontend(listen), accept_wait=config.server.accept_wait)
            acceptor.start()
            acceptors.append(acceptor)
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR1, reopen_logs)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the master reloads by replacing workers
        if engine.fleet is not None:
            engine.fleet.on_flush = self._fleet_flush
            await engine.fleet.start()
        ticker = asyncio.ensure_future(self._tick())
        self.serving = True
        self._report()
        log.info("worker %d serving (pid %d)", spec.slot, os.getpid())
        await self.stop.wait()

        for acceptor in acceptors:
            acceptor.close()  # stop accepting
            # and let go of the socket: on a final stop the master closes its descriptors too,
            # so a new connection is refused rather than queued unaccepted and reset at the end
            # (on a reload the master and the next generation keep it and its queue)
            acceptor.sock.close()
        await state.shutdown(config.server.grace)
        ticker.cancel()
        if engine.fleet is not None:
            await engine.fleet.close()
        self._sync()
        log.info("worker %d stopped", spec.slot)
        return ExitCode.OK

    def _stats(self) -> Mapping[tuple[str, ...], int]:
        """Every counter of this worker: the engine's and the front-ends'."""
        counts = self.engine.counts.copy()
        counts.update(self.state.counts)
        return counts

    def _sync(self) -> None:
        fleet = self.engine.fleet
        self.exporter.sync(self._stats(), self.state.open, None if fleet is None else fleet.up)

    async def _tick(self) -> None:
        spec, engine = self.spec, self.engine
        config = spec.config
        interval = min(1.0, config.server.heartbeat_timeout / 4, config.policy.reload_interval)
        last_policy_check = last_sweep = last_trim = time.monotonic()
        trim = heap_trimmer()
        while True:
            now = time.monotonic()
            self._follow_flushes()
            self._report()
            if os.getppid() != spec.master_pid:
                log.error("worker %d: the master is gone; stopping", spec.slot)
                self.stop.set()
            if now - last_policy_check >= config.policy.reload_interval:
                last_policy_check = now
                self._check_policy()
            if spec.slot == 0 and config.cache.shared and now - last_sweep >= SWEEP_SECONDS:
                last_sweep = now
                self.shared.sweep(limit=10_000)
            if trim is not None and now - last_trim >= TRIM_SECONDS:
                last_trim = now
                trim()
            self._sync()
            await asyncio.sleep(interval)

    def _report(self) -> None:
        """Write this worker's status into its heartbeat file, for the master to read, and beat:
        the file's mtime is the monotonic time of the last beat. The write sets the mtime to
        wall-clock time, which the master (comparing with its monotonic clock) would read as a
        beat in the far future: a worker stopped right after it would never be found silent."""
        status = WorkerStatus(self.serving, self.flushes.applied if self.flushes else 0, len(self.memory))
        os.pwrite(self.spec.heartbeat_fd, encode_status(status), 0)
        now = time.monotonic()
        os.utime(self.spec.heartbeat_fd, (now, now))

    def _follow_flushes(self) -> None:
        if self.flushes is None:
            return
        names = self.flushes.poll()
        if not names:
            return
        if None in names:
            self.memory.flush()
            self.engine.forget_decisions()  # memoized decisions read what was flushed
            log.info("worker %d: memory cache flushed", self.spec.slot)
            return
        for name in filter(None, names):
            gone = self.memory.drop(functools.partial(_mentioned, name))
            log.info("worker %d: %d cache entries for %s flushed", self.spec.slot, gone, name)
        self.engine.forget_decisions()

    def _fleet_flush(self, name: str | None) -> None:
        """A flush another host (or this one) published: the memory layer, and the host's
        shared layer once (by slot 0)."""
        shared = self.spec.slot == 0 and self.spec.config.cache.shared
        if name is None:
            self.memory.flush()
            if shared:
                self.shared.flush()
        else:
            matches = functools.partial(_mentioned, name)
            self.memory.drop(matches)
            if shared:
                self.shared.drop_where(matches)
        self.engine.forget_decisions()
        log.info("worker %d: fleet flush of %s applied", self.spec.slot, name or "everything")

    def _check_policy(self) -> None:
        engine = self.engine
        if not engine.policy.changed():
            return
        try:
            engine.policy.reload()
        except PolicyError as e:
            engine.counts[("policy_reload_failures",)] += 1
            log.debug("worker %d: policy refused, the previous one keeps serving: %s", self.spec.slot, e)
            return
        engine.counts[("policy_reloads",)] += 1
        log.info("worker %d: policy %s reloaded", self.spec.slot, engine.policy.current.path)


def _mentioned(name: str, key: Hashable) -> bool:
    return mentions(key, name)
