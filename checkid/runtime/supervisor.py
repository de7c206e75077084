"""The master: binds every listener, pre-forks the workers, then only supervises.

Its loop reads like gunicorn's: signal handlers only enqueue; each pass handles the queued
signals, then ``reap_workers()``, ``kill_hung_workers()`` and ``maintain_worker_count()``.
It holds no event loop, resolver, cache handle or thread at any fork.

- SIGTERM/SIGINT: first the host leaves its load balancer's pool: ``/healthz`` answers 503
  "draining" while the workers go on serving for ``server.leave_pool`` seconds (none without
  a metrics address; a second SIGTERM/SIGINT ends the wait). A reload under way goes on
  meanwhile (its new workers are what serves); a SIGHUP that comes now is refused
  ("stopping"). Then the workers stop accepting and the listening sockets close, in the
  master and in each worker, so that a new connection is refused (the client or the balancer
  tries another host at once) rather than queued in a backlog no one accepts from and reset
  later; each worker finishes its connections' work within ``server.grace``; whatever is left
  is killed, and the master exits 0. A stop for another reason (a worker that cannot start)
  says "draining" on ``/healthz`` too, from its first moment.
- SIGHUP: reload the configuration and the policy; a bad one is refused (logged, counted)
  and the running one stays. So is a file that states nothing or leaves out a key the
  running configuration sets and whose default would change whom checkid asks
  (:mod:`checkid.config.reload`). A good one replaces the workers one generation at a time on
  the same sockets (listener changes need a restart).
- SIGUSR1: reopen the log file, in the master and every child.

The master keeps the source of the last good policy (read at start, on an accepted SIGHUP
and when an edit of the file loads): a worker it starts runs that when the file on disk
does not load, so a broken edit followed by a worker crash is not an outage. It logs a
refused edit once (the workers only count it) and holds ``checkid_policy_refused`` at 1
while the file on disk is refused.

Started as root, it refuses a configuration or policy file that anyone but root or the run
user can change (sshd's StrictModes, :mod:`checkid.runtime.perms`), at start before it
executes the policy and on each SIGHUP, and at start one the run user (``[server] user``)
could not read: after the privilege drop every reload would fail on it.

It records itself in the state directory (:mod:`checkid.runtime.control`): a pid file and
its state (workers, policy, the outcome of each reload), which ``checkid reload``,
``stats`` and ``cache flush`` read. A reload's outcome is ``ok`` once every worker of the
new generation serves, ``refused`` with the reason, or ``failed``. Under systemd it says
``READY=1`` once every worker serves, ``RELOADING=1``/``READY=1`` around a reload and
``STOPPING=1`` when it drains (:mod:`checkid.runtime.notify`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import IO, Any

from checkid import __version__
from checkid import config as config_mod
from checkid.config import Config
from checkid.config.reload import check_reload
from checkid.engine import policy as policy_mod
from checkid.engine.policy import DEFAULT_PATH
from checkid.errors import CheckidError, ConfigError, PolicyError
from checkid.exitcodes import ExitCode
from checkid.runtime import control, metrics, metricsserver, notify, perms
from checkid.runtime import listeners as listeners_mod
from checkid.runtime import worker as worker_mod
from checkid.runtime.logs import reopen_logs, setup_logging
from checkid.runtime.process import describe, drop_privileges, exit_now, name_process, state_dir

log = logging.getLogger(__name__)

#: a worker that lived this long before dying starts its back-off from scratch
STABLE_SECONDS = 30.0
#: longest wait before respawning a crashing worker
MAX_BACKOFF = 10.0
#: a hung worker gets SIGABRT (its traceback goes to the log), then SIGKILL this much later
ABORT_SECONDS = 1.0
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)
#: seconds between the loop's passes when no signal comes (readiness and flushes show this fast)
PASS_SECONDS = 0.25


@dataclass
class WorkerProc:
    pid: int
    slot: int
    generation: int
    heartbeat: IO[bytes]
    started: float
    #: SIGTERM sent: leaving on purpose (drain, reload)
    retiring: bool = False
    #: when it was sent SIGABRT for a silent event loop (0: never)
    aborted: float = 0.0
    #: what it last wrote into its heartbeat file
    status: control.WorkerStatus = field(default_factory=control.WorkerStatus)


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
    #: the last good policy's source, what new workers fall back on
    policy_source: bytes = b""
    #: (mtime_ns, size) of the policy file last loaded or refused by the master
    policy_stamp: tuple[int, int] | None = None
    #: why the policy file on disk is refused ("" while it loads)
    policy_error: str = ""
    #: READY=1 sent: every worker of the first generation served
    ready: bool = False
    #: the last reloads, oldest first: seq, started (monotonic), generation, result, reason
    reloads: list[dict[str, Any]] = field(default_factory=list)
    #: SIGTERM/SIGINT came: /healthz says "draining" from then on
    draining: bool = False

    # -- set-up ---------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.nworkers = self.config.server.workers or os.cpu_count() or 1
        self.slots = [Slot() for _ in range(self.nworkers)]
        self.state_dir = Path(state_dir(self.config))
        self.cache_path = str(self.state_dir / "cache")
        self.metrics_dir = self.config.metrics.dir or str(self.state_dir / "metrics")
        self.pid = os.getpid()
        self.started = time.time()
        self._published = b""
        #: what /healthz reports, shared with the metrics process (made before it is forked)
        self.health = metricsserver.Health()
        #: started as root: the files it reads must be private to root and the run user
        self.strict = os.geteuid() == 0
        #: the ids the daemon runs as after the privilege drop (root's without [server] user)
        self.run_ids = perms.run_ids(self.config.server.user, self.config.server.group) if self.strict else (0, 0)

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # the directory really used: an unusable one gives way to a private one, which the
        # privilege drop must hand over and master.json must name
        self.metrics_dir = metrics.prepare_dir(self.metrics_dir)
        self.exporter = metrics.Exporter()
        import prometheus_client as prom

        self.policy_refused = prom.Gauge(
            "checkid_policy_refused", "1 while the policy file on disk is refused (the last good one serves)",
            multiprocess_mode="livemax", registry=None)
        log.info("checkid %s: configuration %s, policy %s", __version__,
                 self.config_path or "(embedded defaults)", self.policy_path)
        self._check_files(self.config, readable=True)  # before the policy file is executed
        self._load_policy(self.config)  # refuse a bad policy before binding
        self._check_engine(self.config)
        if self.config.cache.shared:
            self._check_cache()
        self.listeners = [listeners_mod.bind(c, self.nworkers) for c in self.config.listen]
        drop_privileges(self.config, [self.state_dir, Path(self.cache_path), Path(self.metrics_dir)])
        control.write_atomic(self.state_dir / control.PID_FILE, f"{self.pid}\n".encode())
        self.publish()
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

    def _check_files(self, config: Config, readable: bool) -> None:
        """Started as root: refuse a configuration or policy file (the embedded one aside)
        that others can change, and, with ``readable``, one the run user cannot read.

        :raises ConfigError: naming each file at fault
        """
        if not self.strict:
            return
        named = [("configuration", self.config_path)] if self.config_path else []
        if config.policy.path:
            named.append(("policy.path", config.policy.path))
        faults = perms.check_daemon_files(named, *self.run_ids, readable=readable)
        if faults:
            raise ConfigError("; ".join(faults))

    def _check_engine(self, config: Config) -> None:
        """Build an engine as every worker will (block lists, recipient thresholds, policy)
        and load what the listeners need (the front door's certificate),
        so that a file that does not load is refused here, not by workers that then cannot
        start. It holds no loop, resolver or cache handle: nothing survives into a fork.

        :raises ConfigError: or PolicyError
        """
        from checkid.engine.engine import Engine
        from checkid.protocols import registry

        Engine(config)
        registry.check(config)

    @property
    def policy_path(self) -> str:
        return str(self.config.policy.path or DEFAULT_PATH)

    def _load_policy(self, config: Config) -> None:
        """Load ``config``'s policy file and keep its source. :raises PolicyError:"""
        path = config.policy.path or DEFAULT_PATH
        stamp = _stamp(path)
        try:
            policy = policy_mod.load(path)
        except PolicyError as e:
            self.policy_stamp = stamp
            self.policy_error = str(e)
            self.policy_refused.set(1)
            raise
        self.policy_source, self.policy_stamp = policy.source, stamp
        self.policy_error = ""
        self.policy_refused.set(0)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        name_process("checkid-master")
        self.start()
        self.maintain_worker_count()
        status = ExitCode.OK
        while True:
            try:
                signum: int | None = self.signals.get(timeout=self.next_pass_in(time.monotonic()))
            except queue.Empty:
                signum = None
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("master: %s, draining", signal.Signals(signum).name)
                break  # a reload under way goes on while the host leaves the pool
            if signum == signal.SIGHUP:
                self.handle_hup()
            elif signum == signal.SIGUSR1:
                self.handle_usr1()
            if self.reap_workers():
                log.error("a worker could not start; stopping")
                self._finish_reload("failed", "a worker of the new generation could not start (see the log)")
                status = ExitCode.CANNOT_START
                break
            self.kill_hung_workers()
            self.follow_policy_edits()
            self.maintain_worker_count()
            self.read_worker_status()
            self.publish()
            metrics.report_file_faults()  # the master's own metric files, found full meanwhile
        notify.notify("STOPPING=1")
        self.publish()
        try:
            if status == ExitCode.OK:
                self.leave_pool()
            self.stop()
        finally:
            for name in (control.PID_FILE, control.STATE_FILE):
                try:
                    (self.state_dir / name).unlink()
                except OSError:
                    pass
        return status

    def leave_pool(self, clock: Callable[[], float] = time.monotonic,
                   wait: Callable[[float], int | None] | None = None) -> bool:
        """Say "draining" on ``/healthz`` and go on serving (and supervising) for
        ``server.leave_pool`` seconds, so that a load balancer marks this host down while its
        workers still answer. No wait without a metrics process. ``wait(timeout)`` returns
        the next signal or None (the signal queue by default); ``clock`` is the time.

        A reload under way goes on (its workers are what serves); a new SIGHUP is refused
        ("stopping"), so that ``checkid reload`` returns at once. A worker that cannot start
        ends the wait: the reload is recorded failed and the host drains.

        :returns: False when a second SIGTERM/SIGINT or a worker that cannot start cut the
            wait short
        """
        self.draining = True
        self.write_health()
        self.publish()
        seconds = self.config.server.leave_pool if self.metrics_pid else 0.0
        if seconds <= 0:
            return True
        wait = wait or self._next_signal
        log.info("master %d: leaving the pool: /healthz answers 503 for %g s, then the workers drain",
                 self.pid, seconds)
        deadline = clock() + seconds
        while (left := deadline - clock()) > 0:
            signum = wait(min(left, self.next_pass_in(time.monotonic())))
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("master: %s again, draining now", signal.Signals(signum).name)
                return False
            if signum == signal.SIGUSR1:
                self.handle_usr1()
            elif signum == signal.SIGHUP:
                log.warning("master: SIGHUP while stopping; not reloading")
                self._refuse_reload("stopping")
            if self.reap_workers():  # a crashed worker is replaced: the host serves until it drains
                log.error("a worker could not start; draining now")
                self._finish_reload("failed", "a worker of the new generation could not start (see the log)")
                return False
            self.kill_hung_workers()
            self.maintain_worker_count()
            self.read_worker_status()
            self.publish()
        return True

    def _next_signal(self, timeout: float) -> int | None:
        try:
            return self.signals.get(timeout=timeout)
        except queue.Empty:
            return None

    # -- what the master tells the commands and systemd ------------------------------------
    def write_health(self) -> None:
        """Tell the metrics process what ``/healthz`` answers: draining, no worker serving
        (a retiring one still answers its connections), or ok."""
        if self.draining:
            self.health.set(metricsserver.Health.DRAINING)
        elif any(p.status.serving for p in self.workers.values()):
            self.health.set(metricsserver.Health.OK)
        else:
            self.health.set(metricsserver.Health.NO_WORKERS)

    def read_worker_status(self) -> None:
        """Read each worker's status and pass on what ``/healthz`` says; say READY=1, and
        finish a reload, once every worker of the current generation serves."""
        for proc in self.workers.values():
            try:
                proc.status = control.decode_status(os.pread(proc.heartbeat.fileno(), control.STATUS_SIZE, 0))
            except OSError:
                pass
        self.write_health()
        current = [p for p in self.workers.values() if p.generation == self.generation and not p.retiring]
        if len(current) < self.nworkers or not all(p.status.serving for p in current):
            return
        if not self.ready:
            self.ready = True
            log.info("master %d: ready, %d workers serving", self.pid, len(current))
            if not self.draining:  # after STOPPING=1, no READY=1
                notify.notify("READY=1", f"STATUS=serving, {len(current)} workers")
        if self.reloads and self.reloads[-1]["result"] == "pending" \
                and self.reloads[-1]["generation"] == self.generation:
            self._finish_reload("ok", f"worker generation {self.generation} serving")

    def _start_reload(self) -> None:
        for earlier in self.reloads:
            if earlier["result"] == "pending":  # its workers are being replaced too
                earlier.update(result="ok", reason="superseded by a later reload")
        self.reloads = [*self.reloads, {"seq": (self.reloads[-1]["seq"] + 1) if self.reloads else 1,
                                        "started": time.monotonic(), "generation": self.generation,
                                        "result": "pending", "reason": ""}][-control.RELOADS_KEPT:]
        notify.reloading()
        self.publish()

    def _finish_reload(self, result: str, reason: str) -> None:
        if not self.reloads or self.reloads[-1]["result"] != "pending":
            return
        self.reloads[-1].update(result=result, reason=reason, finished=time.monotonic())
        if result != "failed" and not self.draining:
            notify.notify("READY=1", f"STATUS=reload {result}: {reason}")
        self.publish()

    def _refuse_reload(self, reason: str) -> None:
        """Record a SIGHUP refused before it began (no RELOADING=1): ``checkid reload``
        returns with ``reason``. A reload under way stays as it is."""
        now = time.monotonic()
        self.reloads = [*self.reloads, {"seq": (self.reloads[-1]["seq"] + 1) if self.reloads else 1,
                                        "started": now, "finished": now, "generation": self.generation,
                                        "result": "refused", "reason": reason}][-control.RELOADS_KEPT:]
        self.publish()

    def publish(self) -> None:
        """Rewrite the state file when what it says changed."""
        state = {
            "pid": self.pid, "version": __version__, "started": self.started,
            "config": self.config_path or "", "state_dir": str(self.state_dir),
            "metrics_dir": self.metrics_dir, "cache": self.cache_path if self.config.cache.shared else "",
            "policy": {"path": self.policy_path, "refused": bool(self.policy_error), "error": self.policy_error},
            "generation": self.generation, "ready": self.ready, "draining": self.draining,
            "workers_wanted": self.nworkers,
            "workers": [{"pid": p.pid, "slot": p.slot, "generation": p.generation, "retiring": p.retiring,
                         "serving": p.status.serving, "flushed": p.status.flushed, "entries": p.status.entries}
                        for p in sorted(self.workers.values(), key=lambda p: (p.slot, p.pid))],
            "reloads": self.reloads,
        }
        data = json.dumps(state, sort_keys=True).encode()
        if data == self._published:
            return
        try:
            control.write_atomic(self.state_dir / control.STATE_FILE, data)
        except OSError as e:  # a full disk: every pass would retry, so the line is throttled
            metrics.degraded("state_write", "cannot write %s: %s; checkid reload and stats see "
                             "the last state written", self.state_dir / control.STATE_FILE, e.strerror or e)
            return
        self._published = data

    def handle_hup(self) -> None:
        """Reload configuration and policy; replace the workers only if both are good."""
        self._start_reload()
        try:
            new = self._read_config() if self.config_path else self.config
            self._check_files(new, readable=False)  # the master reads as the run user by now
            self._check_engine(new)
            self._load_policy(new)
        except (ConfigError, PolicyError) as e:
            self.exporter.counters["config_reloads"].labels("failed").inc()
            log.error("reload refused, the running configuration stays: %s", e)
            self._finish_reload("refused", str(e))
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
        self.reloads[-1]["generation"] = self.generation
        log.info("reloaded; starting worker generation %d", self.generation)
        self.maintain_worker_count()  # new workers first, on the same sockets
        for proc in list(self.workers.values()):
            if proc.generation < self.generation:
                self._signal(proc.pid, signal.SIGTERM)

    def _read_config(self) -> Config:
        """The configuration file as a reload takes it: valid, stating something, and
        leaving out no guarded key the running one sets. :raises ConfigError:"""
        assert self.config_path is not None
        data = config_mod.read(self.config_path)
        new = config_mod.from_dict(data, source=self.config_path)
        check_reload(self.config, new, data, self.config_path)
        return new

    def handle_usr1(self) -> None:
        reopen_logs()
        for pid in [*self.workers, self.metrics_pid]:
            if pid:
                self._signal(pid, signal.SIGUSR1)

    def follow_policy_edits(self) -> None:
        """Keep the source of an edit the workers will load too, so that a worker started
        later serves what the others serve, not the policy the master started with."""
        path = self.config.policy.path or DEFAULT_PATH
        if _stamp(path) == self.policy_stamp:
            return
        refused_before = bool(self.policy_error)
        try:
            self._load_policy(self.config)
        except PolicyError as e:
            # logged here once for every worker (each counts its own refusal)
            log.error("policy refused, the previous one keeps serving: %s", e)
            return
        if refused_before:
            log.info("policy %s loads again", path)

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
                log.warning("metrics process %d exited (%s); restarting it", pid, describe(status))
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
            if proc.retiring and code == ExitCode.OK:
                log.info("worker %d (slot %d) finished", pid, proc.slot)
                continue
            if code == ExitCode.CANNOT_START:
                boot_failure = True
            slot = self.slots[proc.slot]
            lived = time.monotonic() - proc.started
            slot.crashes = 1 if lived > STABLE_SECONDS else slot.crashes + 1
            delay = min(MAX_BACKOFF, 0.1 * 2 ** (slot.crashes - 1))
            slot.not_before = time.monotonic() + delay
            reason = "hung" if proc.aborted else "killed" if code < 0 else "exited"
            self.exporter.counters["worker_restarts"].labels(reason).inc()
            log.error("worker %d (slot %d) %s after %.1f s; restarting in %.1f s",
                      pid, proc.slot, describe(status), lived, delay)

    def kill_hung_workers(self) -> None:
        """SIGABRT a worker whose event loop went silent (it writes its traceback to the log
        and exits), then SIGKILL it on a later pass if it is still there (gunicorn's order)."""
        now = time.monotonic()
        limit = self.config.server.heartbeat_timeout
        for proc in list(self.workers.values()):
            if proc.aborted:
                if now - proc.aborted >= ABORT_SECONDS:
                    log.error("worker %d (slot %d) still there after SIGABRT; killing it", proc.pid, proc.slot)
                    self._signal(proc.pid, signal.SIGKILL)
                continue
            try:
                last = os.fstat(proc.heartbeat.fileno()).st_mtime
            except OSError:
                continue
            if now - last > limit:
                log.error("worker %d (slot %d): event loop silent for %.1f s; aborting it",
                          proc.pid, proc.slot, now - last)
                proc.aborted = now
                self._signal(proc.pid, signal.SIGABRT)

    def next_pass_in(self, now: float) -> float:
        """Seconds the loop may wait for a signal before its next pass: ``PASS_SECONDS``, or
        less when an empty slot's respawn is due sooner, so that a worker logged as
        "restarting in 0.1 s" starts then, not at the next regular pass."""
        current = {p.slot for p in self.workers.values() if p.generation == self.generation}
        due = [slot.not_before - now for n, slot in enumerate(self.slots) if n not in current]
        return max(0.0, min([PASS_SECONDS, *due]))

    def maintain_worker_count(self) -> None:
        now = time.monotonic()
        current = {p.slot for p in self.workers.values() if p.generation == self.generation}
        for slot_no, slot in enumerate(self.slots):
            if slot_no not in current and now >= slot.not_before:
                self.spawn_worker(slot_no)
        self.exporter.workers.set(len(self.workers))

    # -- processes ------------------------------------------------------------------------
    def _heartbeat_file(self) -> IO[bytes]:
        """A new worker's heartbeat and status file. In memory (a memfd): on a full state
        directory a worker's first status write would fail and the worker with it. Where
        memfds are refused (a seccomp filter), an unlinked file in the state directory with
        its block allocated now, so that a full disk fails here, in the master.

        :raises OSError: no memfd, and no room in the state directory
        """
        try:
            return os.fdopen(os.memfd_create("checkid-heartbeat"), "w+b")
        except (OSError, AttributeError):  # AttributeError: not Linux
            pass
        heartbeat = tempfile.TemporaryFile(dir=self.state_dir)
        try:
            os.posix_fallocate(heartbeat.fileno(), 0, control.STATUS_SIZE)
        except BaseException:
            heartbeat.close()
            raise
        return heartbeat

    def spawn_worker(self, slot: int) -> None:
        try:
            heartbeat = self._heartbeat_file()
        except OSError as e:  # the slot is tried again a second later; the master lives on
            metrics.degraded("state_write", "worker slot %d not started: no heartbeat file in %s (%s); "
                             "trying again", slot, self.state_dir, e.strerror or e)
            self.slots[slot].not_before = time.monotonic() + 1.0
            return
        now = time.monotonic()
        os.utime(heartbeat.fileno(), (now, now))
        spec = worker_mod.WorkerSpec(
            slot=slot, config=self.config,
            sockets=[(lst.config, lst.for_slot(slot)) for lst in self.listeners],
            heartbeat_fd=heartbeat.fileno(), master_pid=self.pid, cache_path=self.cache_path,
            policy_source=self.policy_source, state_dir=str(self.state_dir),
        )
        pid = os.fork()
        if pid == 0:
            code: int = ExitCode.CANNOT_START
            try:
                self._close_in_child(keep={id(s) for _, s in spec.sockets})
                name_process(f"checkid-w{slot}")
                code = worker_mod.run(spec)
            finally:
                exit_now(code)
        self.workers[pid] = WorkerProc(pid, slot, self.generation, heartbeat, now)

    def _spawn_metrics(self) -> None:
        address = self.config.metrics.address
        if not address:
            return
        pid = os.fork()
        if pid == 0:
            code: int = ExitCode.FAILURE
            try:
                self._close_in_child(keep=set())
                name_process("checkid-metrics")
                code = metricsserver.run(address, self.pid, self.health)
            finally:
                exit_now(code)
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
        """Drain the workers within the grace period, then kill what is left.

        ``/healthz`` says "draining" from the start, whatever stopped the master. Once the
        workers have their SIGTERM the master closes its descriptors of the listening sockets
        (each worker closes its own once it stops accepting): with none left open the kernel
        refuses a new connection, which the client (or HAProxy's ``redispatch``) takes to
        another host at once, instead of completing its handshake into a backlog no one
        accepts from and resetting it at the end. A unix socket's file goes at the end.
        """
        self.draining = True
        self.write_health()
        self._finish_reload("failed", "the daemon was stopped")
        for proc in self.workers.values():
            proc.retiring = True
            self._signal(proc.pid, signal.SIGTERM)
        for listener in self.listeners:
            for sock in listener.sockets:
                sock.close()
        deadline = time.monotonic() + self.config.server.grace + 2.0
        while self.workers and time.monotonic() < deadline:
            self.reap_workers()
            if self.workers:
                time.sleep(0.05)
        for pid in list(self.workers):  # SIGABRT first: the log shows where each one hangs
            log.error("worker %d did not finish in time; aborting it", pid)
            self._signal(pid, signal.SIGABRT)
        deadline = time.monotonic() + ABORT_SECONDS
        while self.workers and time.monotonic() < deadline:
            self.reap_workers()
            if self.workers:
                time.sleep(0.05)
        for pid in list(self.workers):
            log.error("worker %d still there after SIGABRT; killing it", pid)
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
            listener.close()  # the sockets are closed already: this removes a unix socket's file
        log.info("master %d: stopped", self.pid)


def _stamp(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def serve(config: Config, config_path: str | None) -> int:
    """``checkid serve``: the master's whole life. Returns its exit status."""
    setup_logging(config)
    try:
        return Master(config, config_path).run()
    except CheckidError as e:
        log.error("%s", e)
        raise
