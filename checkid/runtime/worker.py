"""A worker process: its own uvloop loop, engine, resolver and cache handles, serving the
listeners it inherited from the master.

Everything that owns a thread, a loop or an LMDB handle is created here, after the fork.
The worker ticks from inside its event loop: a heartbeat the master watches (a stalled
loop stops ticking and gets replaced), a parent check (the worker leaves if the master is
gone), the policy file check (an edit is live within ``policy.reload_interval``), and the
metrics sync. SIGTERM/SIGINT: stop accepting, finish what is in flight within
``server.grace``, exit 0.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvloop

from checkid.engine.dns.cache import Cache, LayeredCache, MemoryCache
from checkid.config import Config, ListenConfig
from checkid.engine.engine import Engine
from checkid.errors import PolicyError

log = logging.getLogger(__name__)

#: exit codes a worker reports to the master
EXIT_OK = 0
#: the worker could not start (configuration, policy, cache): the master halts, no fork loop
WORKER_BOOT_ERROR = 3
#: seconds between LMDB sweeps of expired entries (done by slot 0 only)
SWEEP_SECONDS = 60.0


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
    #: called in the worker to reopen logs (SIGUSR1)
    reopen_logs: Callable[[], None]


def run(spec: WorkerSpec) -> int:
    """The worker's whole life, in the forked child. Returns its exit code."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        return uvloop.run(Worker(spec).serve())
    except Exception:
        log.exception("worker %d failed", spec.slot)
        return WORKER_BOOT_ERROR


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.stop = asyncio.Event()
        self.engine: Engine | None = None

    def _cache(self) -> Cache:
        config = self.spec.config
        memory = MemoryCache(config.dns.cache_size)
        if not config.cache.shared:
            return memory
        from checkid.runtime.lmdbcache import LmdbCache

        self.shared = LmdbCache(self.spec.cache_path, config.cache.size_mb)
        return LayeredCache(memory, self.shared)

    async def serve(self) -> int:
        spec, config = self.spec, self.spec.config
        from checkid.runtime.metrics import Exporter
        from checkid.protocols.registry import protocol_factory

        try:
            self.exporter = Exporter()
            self.engine = engine = Engine(config, cache=self._cache(), metrics=self.exporter)
        except Exception as e:  # a configuration the master accepted should boot: report, do not loop
            log.error("worker %d cannot start: %s", spec.slot, e)
            return WORKER_BOOT_ERROR
        loop = asyncio.get_running_loop()
        servers = []
        for listen, sock in spec.sockets:
            factory = protocol_factory(engine, config, listen)
            if sock.family == socket.AF_UNIX:
                servers.append(await loop.create_unix_server(factory, sock=sock))
            else:
                servers.append(await loop.create_server(factory, sock=sock))
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR1, spec.reopen_logs)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the master reloads by replacing workers
        ticker = asyncio.ensure_future(self._tick())
        log.info("worker %d serving (pid %d)", spec.slot, os.getpid())
        await self.stop.wait()

        for server in servers:
            server.close()  # stop accepting; the master keeps the sockets and their queues
        deadline = loop.time() + config.server.grace
        while loop.time() < deadline:
            busy = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t is not ticker]
            if not busy:
                break
            await asyncio.wait(busy, timeout=max(0.0, deadline - loop.time()))
        ticker.cancel()
        self.exporter.sync(engine.counts, dict(engine.open_connections))
        log.info("worker %d stopped", spec.slot)
        return EXIT_OK

    async def _tick(self) -> None:
        spec, engine = self.spec, self.engine
        assert engine is not None
        config = spec.config
        interval = min(1.0, config.server.heartbeat_timeout / 4, config.policy.reload_interval)
        last_policy_check = last_sweep = time.monotonic()
        while True:
            now = time.monotonic()
            os.utime(spec.heartbeat_fd, (now, now))
            if os.getppid() != spec.master_pid:
                log.error("worker %d: the master is gone; stopping", spec.slot)
                self.stop.set()
            if now - last_policy_check >= config.policy.reload_interval:
                last_policy_check = now
                self._check_policy()
            if spec.slot == 0 and config.cache.shared and now - last_sweep >= SWEEP_SECONDS:
                last_sweep = now
                self.shared.sweep(limit=10_000)
            self.exporter.sync(engine.counts, dict(engine.open_connections))
            await asyncio.sleep(interval)

    def _check_policy(self) -> None:
        engine = self.engine
        assert engine is not None
        if not engine.policy.changed():
            return
        try:
            engine.policy.reload()
        except PolicyError as e:
            engine.counts[("policy_reload_failures",)] += 1
            log.error("worker %d: policy refused, the previous one keeps serving: %s", self.spec.slot, e)
            return
        engine.counts[("policy_reloads",)] += 1
        log.info("worker %d: policy %s reloaded", self.spec.slot, engine.policy.current.path)


def exit_now(code: int) -> None:
    """Leave the forked child without running the parent's cleanup (atexit, buffers)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
