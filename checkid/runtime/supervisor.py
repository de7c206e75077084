"""The master: binds every listener, pre-forks the workers, then only supervises.

Its loop reads like gunicorn's: signal handlers only enqueue; each pass handles the queued
signals, then ``reap_workers()``, ``kill_hung_workers()`` and ``maintain_worker_count()``.
It holds no event loop, resolver, cache handle or thread at any fork.

- SIGTERM/SIGINT: workers stop accepting and finish in-flight requests within
  ``server.grace``; then whatever is left is killed, and the master exits 0.
- SIGHUP: reload the configuration and the policy; a bad one is refused (logged, counted)
  and the running one stays. A good one replaces the workers one generation at a time on
  the same sockets (listener changes need a restart).
- SIGUSR1: reopen the log file, in the master and every child.
"""
from __future__ import annotations

import ctypes
import dataclasses
import grp
import logging
import os
import pwd
import queue
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from checkid import config as config_mod
from checkid.runtime import listeners as listeners_mod
from checkid.runtime import metrics
from checkid.engine import policy as policy_mod
from checkid.runtime import worker as worker_mod
from checkid.config import Config
from checkid.errors import CheckidError, ConfigError, PolicyError
from checkid.engine.policy import DEFAULT_PATH

log = logging.getLogger(__name__)

EXIT_OK = 0
#: a worker could not boot: the master stops instead of fork-looping
EXIT_WORKER_BOOT = 3
#: a worker that lived this long before dying starts its back-off from scratch
STABLE_SECONDS = 30.0
#: longest wait before respawning a crashing worker
MAX_BACKOFF = 10.0
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)


@dataclass
class WorkerProc:
    pid: int
    slot: int
    generation: int
    heartbeat: IO[bytes]
    started: float
    #: SIGTERM sent: leaving on purpose (drain, reload)
    retiring: bool = False


@dataclass
class Slot:
    crashes: int = 0
    not_before: float = 0.0


@dataclass
class Master:
    config: Config
    config_path: str | None = None
    workers: dict[int, WorkerProc] = field(default_factory=dict)
    slots: list[Slot] = field(default_factory=list)
    generation: int = 0
    signals: "queue.SimpleQueue[int]" = field(default_factory=queue.SimpleQueue)
    metrics_pid: int = 0
    log_handler: logging.Handler | None = None

    # -- set-up ---------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.nworkers = self.config.server.workers or os.cpu_count() or 1
        self.slots = [Slot() for _ in range(self.nworkers)]
        self.state_dir = Path(state_dir(self.config))
        self.cache_path = str(self.state_dir / "cache")
        self.metrics_dir = self.config.metrics.dir or str(self.state_dir / "metrics")
        self.pid = os.getpid()

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        metrics.prepare_dir(self.metrics_dir)
        self.exporter = metrics.Exporter()
        policy_mod.load(self.config.policy.path or DEFAULT_PATH)  # refuse a bad policy before binding
        if self.config.cache.shared:
            self._check_cache()
        self.listeners = [listeners_mod.bind(c, self.nworkers) for c in self.config.listen]
        self._drop_privileges()
        for sig in SIGNALS:
            signal.signal(sig, lambda signum, _frame: self.signals.put_nowait(signum))
        for listener in self.listeners:
            log.info("listening: %s on %s%s", listener.config.protocol, listener.config.address,
                     " (oneshot)" if listener.config.oneshot else "")
        self._spawn_metrics()
        log.info("master %d: %d workers, state in %s", self.pid, self.nworkers, self.state_dir)

    def _check_cache(self) -> None:
        """Create the shared cache and clear stale readers, then close it: the master must
        not hold it open across a fork."""
        from checkid.runtime.lmdbcache import LmdbCache

        try:
            cache = LmdbCache(self.cache_path, self.config.cache.size_mb)
        except Exception as e:
            raise ConfigError(f"shared cache {self.cache_path}: {e}") from None
        cache.reader_check()
        cache.close()

    def _drop_privileges(self) -> None:
        server = self.config.server
        if os.geteuid() != 0 or not server.user:
            return
        try:
            user = pwd.getpwnam(server.user)
            gid = grp.getgrnam(server.group).gr_gid if server.group else user.pw_gid
        except KeyError as e:
            raise ConfigError(f"server.user/group: unknown {e}") from None
        for path in (self.state_dir, Path(self.cache_path), Path(self.metrics_dir)):
            for p in [path, *path.rglob("*")] if path.exists() else []:
                os.chown(p, user.pw_uid, gid)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(user.pw_uid)
        log.info("running as %s:%s", server.user, server.group or user.pw_gid)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        name_process("checkid-master")
        self.start()
        self.maintain_worker_count()
        status = EXIT_OK
        while True:
            try:
                signum: int | None = self.signals.get(timeout=1.0)
            except queue.Empty:
                signum = None
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("master: %s, draining", signal.Signals(signum).name)
                break
            if signum == signal.SIGHUP:
                self.handle_hup()
            elif signum == signal.SIGUSR1:
                self.handle_usr1()
            boot_failure = self.reap_workers()
            if boot_failure:
                log.error("a worker could not start; stopping")
                status = EXIT_WORKER_BOOT
                break
            self.kill_hung_workers()
            self.maintain_worker_count()
        self.stop()
        return status

    def handle_hup(self) -> None:
        """Reload configuration and policy; replace the workers only if both are good."""
        try:
            new = config_mod.load(self.config_path) if self.config_path else self.config
            policy_mod.load(new.policy.path or DEFAULT_PATH)
        except (ConfigError, PolicyError) as e:
            self.exporter.counters["config_reloads"].labels("failed").inc()
            log.error("reload refused, the running configuration stays: %s", e)
            return
        if new.listen != self.config.listen or new.server.workers != self.config.server.workers:
            log.warning("listeners and worker count change only with a restart; keeping them")
            new = dataclasses.replace(new, listen=self.config.listen,
                                      server=dataclasses.replace(new.server, workers=self.config.server.workers))
        self.config = new
        self.generation += 1
        for proc in self.workers.values():
            proc.retiring = True
        self.exporter.counters["config_reloads"].labels("ok").inc()
        log.info("reloaded; starting worker generation %d", self.generation)
        self.maintain_worker_count()  # new workers first, on the same sockets
        for proc in list(self.workers.values()):
            if proc.generation < self.generation:
                self._signal(proc.pid, signal.SIGTERM)

    def handle_usr1(self) -> None:
        reopen_logs()
        for pid in [*self.workers, self.metrics_pid]:
            if pid:
                self._signal(pid, signal.SIGUSR1)

    def reap_workers(self) -> bool:
        """Collect exited children; True when a worker failed to boot."""
        boot_failure = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return boot_failure
            if pid == 0:
                return boot_failure
            if pid == self.metrics_pid:
                log.warning("metrics process %d exited (%s); restarting it", pid, _describe(status))
                self.metrics_pid = 0
                self._spawn_metrics()
                continue
            proc = self.workers.pop(pid, None)
            if proc is None:
                continue  # not ours (PID 1 duty)
            proc.heartbeat.close()
            metrics.mark_dead(pid)
            if self.config.cache.shared:
                self._check_cache()
            code = os.waitstatus_to_exitcode(status)
            if proc.retiring and code == worker_mod.EXIT_OK:
                log.info("worker %d (slot %d) finished", pid, proc.slot)
                continue
            if code == worker_mod.WORKER_BOOT_ERROR:
                boot_failure = True
            slot = self.slots[proc.slot]
            lived = time.monotonic() - proc.started
            slot.crashes = 1 if lived > STABLE_SECONDS else slot.crashes + 1
            delay = min(MAX_BACKOFF, 0.1 * 2 ** (slot.crashes - 1))
            slot.not_before = time.monotonic() + delay
            reason = "killed" if code < 0 else "exited"
            self.exporter.counters["worker_restarts"].labels(reason).inc()
            log.error("worker %d (slot %d) %s after %.1f s; restarting in %.1f s",
                      pid, proc.slot, _describe(status), lived, delay)

    def kill_hung_workers(self) -> None:
        now = time.monotonic()
        limit = self.config.server.heartbeat_timeout
        for proc in list(self.workers.values()):
            try:
                last = os.fstat(proc.heartbeat.fileno()).st_mtime
            except OSError:
                continue
            if now - last > limit:
                log.error("worker %d (slot %d): event loop silent for %.1f s; killing it",
                          proc.pid, proc.slot, now - last)
                self.exporter.counters["worker_restarts"].labels("hung").inc()
                self._signal(proc.pid, signal.SIGKILL)
                os.utime(proc.heartbeat.fileno(), (now + 3600, now + 3600))  # once is enough

    def maintain_worker_count(self) -> None:
        now = time.monotonic()
        current = {p.slot for p in self.workers.values() if p.generation == self.generation}
        for slot_no, slot in enumerate(self.slots):
            if slot_no not in current and now >= slot.not_before:
                self.spawn_worker(slot_no)
        self.exporter.workers.set(len(self.workers))

    # -- processes ------------------------------------------------------------------------
    def spawn_worker(self, slot: int) -> None:
        heartbeat = tempfile.TemporaryFile(dir=self.state_dir)
        now = time.monotonic()
        os.utime(heartbeat.fileno(), (now, now))
        spec = worker_mod.WorkerSpec(
            slot=slot, config=self.config,
            sockets=[(lst.config, lst.for_slot(slot)) for lst in self.listeners],
            heartbeat_fd=heartbeat.fileno(), master_pid=self.pid, cache_path=self.cache_path,
            reopen_logs=reopen_logs,
        )
        pid = os.fork()
        if pid == 0:
            code = worker_mod.WORKER_BOOT_ERROR
            try:
                self._close_in_child(keep={id(s) for _, s in spec.sockets})
                name_process(f"checkid-w{slot}")
                code = worker_mod.run(spec)
            finally:
                worker_mod.exit_now(code)
        self.workers[pid] = WorkerProc(pid, slot, self.generation, heartbeat, now)

    def _spawn_metrics(self) -> None:
        address = self.config.metrics.address
        if not address:
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._close_in_child(keep=set())
                name_process("checkid-metrics")
                from checkid.runtime import metricsserver

                code = metricsserver.run(address, self.pid)
            finally:
                worker_mod.exit_now(code)
        self.metrics_pid = pid

    def _close_in_child(self, keep: set[int]) -> None:
        for listener in self.listeners:
            for sock in listener.sockets:
                if id(sock) not in keep:
                    sock.close()
        for proc in self.workers.values():
            proc.heartbeat.close()

    def _signal(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """Drain the workers within the grace period, then kill what is left."""
        for proc in self.workers.values():
            proc.retiring = True
            self._signal(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.grace + 2.0
        while self.workers and time.monotonic() < deadline:
            self.reap_workers()
            if self.workers:
                time.sleep(0.05)
        for pid in list(self.workers):
            log.error("worker %d did not finish in time; killing it", pid)
            self._signal(pid, signal.SIGKILL)
        while self.workers:
            pid, _ = os.waitpid(-1, 0)
            self.workers.pop(pid, None)
        if self.metrics_pid:
            self._signal(self.metrics_pid, signal.SIGTERM)
            try:
                os.waitpid(self.metrics_pid, 0)
            except ChildProcessError:
                pass
        for listener in self.listeners:
            listener.close()
        log.info("master %d: stopped", self.pid)


def state_dir(config: Config) -> str:
    if config.server.state_dir:
        return config.server.state_dir
    if os.geteuid() == 0:
        return "/var/lib/checkid"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "checkid")


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


_log_file: str = ""


def setup_logging(config: Config) -> None:
    global _log_file
    _log_file = config.server.log_file
    handler: logging.Handler = logging.FileHandler(_log_file) if _log_file else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s checkid[%(process)d]: %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=config.server.log_level.upper(), handlers=[handler], force=True)


def reopen_logs() -> None:
    """SIGUSR1: reopen the log file (after logrotate moved it)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()
            log.info("log reopened")


def serve(config: Config, config_path: str | None) -> int:
    setup_logging(config)
    try:
        return Master(config, config_path).run()
    except CheckidError as e:
        log.error("%s", e)
        raise


def name_process(name: str) -> None:
    """The name ps, top and /proc/PID/comm show (Linux keeps 15 bytes), so an operator can
    tell the master, each worker slot and the metrics process apart."""
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass  # not Linux: the names are a convenience
