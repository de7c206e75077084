"""Leaving a load balancer's pool (issue 16): ``/healthz`` answers 503 "draining" from SIGTERM
on while the workers go on serving for ``[server] leave_pool`` seconds, 503 "workers gone"
when no worker serves, and a second SIGTERM ends the wait. A reload under way then goes on, a
new one is refused ("stopping"); once the workers drain, the listening socket is closed
everywhere, so that a new connection is refused at once rather than queued and reset."""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from checkid import config as config_mod
from checkid.config import Config
from checkid.errors import ConfigError
from checkid.runtime import control, metricsserver
from checkid.runtime.metricsserver import Connections, Health, health_check
from checkid.protocols.postfix_policy import codec as pol
from checkid.runtime.supervisor import PASS_SECONDS, Master, WorkerProc
from testsupport.policy import ask
from testsupport.processes import Checkid, free_port, get_healthz, wait_until, world_readable_tmpdir
from tests.conftest import run

SECONDS = 30.0
#: the fake workers' and metrics process's pid: above Linux's PID_MAX_LIMIT (2**22), so no
#: process has it and a signal the master sends it reaches no one
NO_PID = 2**22 + 1


@pytest.fixture
def heartbeat() -> Iterator[IO[bytes]]:
    """A fake worker's heartbeat file, saying it serves."""
    with tempfile.TemporaryFile() as f:
        f.write(control.encode_status(control.WorkerStatus(serving=True)))
        f.flush()
        yield f


async def healthz(port: int) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await reader.read()
    writer.close()
    return int(answer.split()[1]), answer.split(b"\r\n\r\n", 1)[1]


def test_healthz_answers_what_the_master_wrote_into_the_shared_byte() -> None:
    health = Health()
    parent = [os.getpid()]
    conns = Connections(health_check(health, os.getpid(), getppid=lambda: parent[0]))

    async def scenario() -> list[tuple[int, bytes]]:
        server = await metricsserver.start("127.0.0.1", 0, conns)
        port = server.sockets[0].getsockname()[1]
        seen = [await healthz(port)]  # before any worker said it serves
        for state in (Health.OK, Health.DRAINING, Health.NO_WORKERS):
            health.set(state)
            seen.append(await healthz(port))
        parent[0] = 1  # the master died: the process was handed to init
        seen.append(await healthz(port))
        server.close()
        return seen

    assert run(scenario()) == [(503, b"workers gone\n"), (200, b"ok\n"), (503, b"draining\n"),
                               (503, b"workers gone\n"), (503, b"master gone\n")]


def test_the_health_byte_is_shared_with_a_forked_child() -> None:
    health = Health()
    health.set(Health.OK)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the metrics process's side: it sees what the master writes after the fork
        code = 1
        try:
            os.read(read_end, 1)
            code = 0 if health.get() == Health.DRAINING else 2
        finally:
            os._exit(code)
    health.set(Health.DRAINING)
    os.write(write_end, b"x")
    _, status = os.waitpid(pid, 0)
    os.close(read_end)
    os.close(write_end)
    assert os.waitstatus_to_exitcode(status) == 0


def master_in(state_dir: Path, leave_pool: float = 5.0) -> Master:
    config = Config()
    server = dataclasses.replace(config.server, state_dir=str(state_dir), leave_pool=leave_pool)
    master = Master(dataclasses.replace(config, server=server))
    master.state_dir.mkdir(parents=True, exist_ok=True)
    master.passes = 0  # type: ignore[attr-defined]

    def supervised() -> bool:
        master.passes += 1  # type: ignore[attr-defined]
        return False
    # no children of this test process are reaped, killed or forked
    master.reap_workers = supervised  # type: ignore[method-assign]
    master.kill_hung_workers = lambda: None  # type: ignore[method-assign]
    master.maintain_worker_count = lambda: None  # type: ignore[method-assign]
    for slot in master.slots:  # none is forked here, so none is due a respawn
        slot.not_before = math.inf
    master.listeners = []
    return master


class Clock:
    """Time that moves only when the master waits."""

    def __init__(self, signals: dict[int, int] | None = None) -> None:
        self.now = 1000.0
        self.waits: list[float] = []
        self.signals = signals or {}
        self.health_seen: list[int] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, master: Master):
        def wait(timeout: float) -> int | None:
            self.health_seen.append(master.health.get())
            self.waits.append(timeout)
            signum = self.signals.get(len(self.waits))
            if signum is None:
                self.now += timeout
            return signum
        return wait


def test_leave_pool_says_draining_and_serves_for_the_configured_seconds(tmp_path: Path,
                                                                      heartbeat: IO[bytes]) -> None:
    master = master_in(tmp_path / "state", leave_pool=5.0)
    master.metrics_pid = NO_PID  # a metrics process: someone can see /healthz
    master.workers[NO_PID] = WorkerProc(NO_PID, 0, 0, heartbeat, 0.0, status=control.WorkerStatus(serving=True))
    master.write_health()
    assert master.health.get() == Health.OK
    clock = Clock()
    assert master.leave_pool(clock, clock.wait(master)) is True
    assert sum(clock.waits) == pytest.approx(5.0)
    assert set(clock.health_seen) == {Health.DRAINING}
    assert master.passes == len(clock.waits)  # type: ignore[attr-defined]
    # a worker still serving does not make it healthy again
    master.read_worker_status()
    assert master.health.get() == Health.DRAINING


def test_a_second_sigterm_ends_the_wait_at_once(tmp_path: Path) -> None:
    master = master_in(tmp_path / "state", leave_pool=60.0)
    master.metrics_pid = NO_PID
    clock = Clock(signals={3: signal.SIGTERM})
    assert master.leave_pool(clock, clock.wait(master)) is False
    assert len(clock.waits) == 3 and clock.now < 1000.0 + 60.0


@pytest.mark.parametrize("leave_pool, metrics_pid", [(0.0, NO_PID), (5.0, 0)])
def test_no_wait_without_a_leave_pool_or_without_a_metrics_process(tmp_path: Path, leave_pool: float,
                                                                   metrics_pid: int) -> None:
    master = master_in(tmp_path / "state", leave_pool=leave_pool)
    master.metrics_pid = metrics_pid
    clock = Clock()
    assert master.leave_pool(clock, clock.wait(master)) is True
    assert clock.waits == [] and master.health.get() == Health.DRAINING


def test_no_worker_serving_is_workers_gone(tmp_path: Path, heartbeat: IO[bytes]) -> None:
    master = master_in(tmp_path / "state")
    master.write_health()
    assert master.health.get() == Health.NO_WORKERS  # none started yet
    master.workers[NO_PID] = WorkerProc(NO_PID, 0, 0, heartbeat, 0.0, retiring=True,
                                        status=control.WorkerStatus(serving=True))
    master.write_health()
    assert master.health.get() == Health.OK  # a retiring worker still answers its connections
    del master.workers[NO_PID]
    master.write_health()
    assert master.health.get() == Health.NO_WORKERS


def test_a_stop_for_any_reason_says_draining_from_its_start(tmp_path: Path, heartbeat: IO[bytes]) -> None:
    # a worker that cannot start stops the master without a SIGTERM, so without leave_pool
    master = master_in(tmp_path / "state")
    master.workers[NO_PID] = WorkerProc(NO_PID, 0, 0, heartbeat, 0.0, status=control.WorkerStatus(serving=True))
    master.write_health()
    assert master.health.get() == Health.OK
    seen: list[tuple[int, bool]] = []

    def reap() -> bool:  # what /healthz says while the workers drain
        seen.append((master.health.get(), master.draining))
        master.workers.clear()
        return False
    master.reap_workers = reap  # type: ignore[method-assign]
    master.stop()
    assert seen == [(Health.DRAINING, True)]


def pending_reload(master: Master) -> None:
    """A SIGHUP's new generation started, not serving yet."""
    master.generation = 1
    master.reloads = [{"seq": 1, "started": time.monotonic(), "generation": 1, "result": "pending", "reason": ""}]


def test_a_reload_under_way_at_sigterm_finishes_while_the_host_leaves_the_pool(tmp_path: Path,
                                                                               heartbeat: IO[bytes]) -> None:
    master = master_in(tmp_path / "state", leave_pool=5.0)
    master.nworkers = 1
    master.metrics_pid = NO_PID
    pending_reload(master)
    master.workers[NO_PID] = WorkerProc(NO_PID, 0, 1, heartbeat, 0.0)  # its heartbeat says it serves
    clock = Clock()
    assert master.leave_pool(clock, clock.wait(master)) is True
    assert master.reloads[-1]["result"] == "ok"
    master.workers.clear()
    master.stop()
    assert master.reloads[-1]["result"] == "ok"  # what happened, not "the daemon was stopped"


def test_a_reload_still_under_way_when_the_workers_drain_failed(tmp_path: Path) -> None:
    master = master_in(tmp_path / "state")
    pending_reload(master)
    master.stop()
    assert (master.reloads[-1]["result"], master.reloads[-1]["reason"]) == ("failed", "the daemon was stopped")


def test_a_sighup_while_leaving_the_pool_is_refused_at_once(tmp_path: Path) -> None:
    master = master_in(tmp_path / "state", leave_pool=5.0)
    master.metrics_pid = NO_PID
    clock = Clock(signals={2: signal.SIGHUP})
    assert master.leave_pool(clock, clock.wait(master)) is True
    assert [(r["result"], r["reason"]) for r in master.reloads] == [("refused", "stopping")]
    # what `checkid reload` reads: an outcome, not "pending"
    state = json.loads((master.state_dir / control.STATE_FILE).read_text())
    assert [(r["result"], r["reason"]) for r in state["reloads"]] == [("refused", "stopping")]
    assert master.generation == 0


def test_a_worker_that_cannot_start_ends_the_wait(tmp_path: Path) -> None:
    master = master_in(tmp_path / "state", leave_pool=60.0)
    master.metrics_pid = NO_PID
    pending_reload(master)
    master.reap_workers = lambda: True  # type: ignore[method-assign]
    clock = Clock()
    assert master.leave_pool(clock, clock.wait(master)) is False
    assert len(clock.waits) == 1
    assert master.reloads[-1]["result"] == "failed" and "could not start" in master.reloads[-1]["reason"]


def test_leave_pool_passes_when_a_respawn_is_due(tmp_path: Path) -> None:
    master = master_in(tmp_path / "state", leave_pool=5.0)
    master.metrics_pid = NO_PID
    master.slots[0].not_before = time.monotonic() + PASS_SECONDS / 10  # a crashed worker's back-off

    def maintain() -> None:  # the pass respawns it (none is forked here): nothing more is due
        master.slots[0].not_before = math.inf
    master.maintain_worker_count = maintain  # type: ignore[method-assign]
    clock = Clock()
    master.leave_pool(clock, clock.wait(master))
    assert 0 < clock.waits[0] <= PASS_SECONDS / 10
    assert clock.waits[1] == PASS_SECONDS


def test_a_negative_leave_pool_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"server\.leave_pool"):
        config_mod.from_dict({"server": {"leave_pool": -1}})


def test_serve_leaves_the_pool_then_stops_on_a_second_sigterm(dns_server) -> None:
    port = free_port()
    workdir = world_readable_tmpdir("checkid-drain-")
    toml = (f'[[listen]]\nprotocol = "policy"\naddress = "127.0.0.1:{port}"\n'
            f'[server]\nworkers = 1\nstate_dir = "{workdir / "state"}"\nleave_pool = 600\n'
            f'[dns]\nnameservers = ["{dns_server.address}"]\n[registry]\nzone = "registry.test"\n')
    checkid = Checkid(toml, workdir, [port]).start()
    try:
        assert wait_until(lambda: get_healthz(checkid.metrics_port)[0] == 200, "/healthz 200", SECONDS)
        assert checkid.proc is not None
        checkid.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: get_healthz(checkid.metrics_port) == (503, b"draining\n"),
                          "/healthz 503 draining", SECONDS)
        # still serving while it leaves the pool, on new connections too
        assert ask(port).startswith("PREPEND")
        stats = subprocess.run([sys.executable, "-m", "checkid", "stats", "--json", "-c", str(checkid.config)],
                               capture_output=True, text=True, timeout=60)
        assert json.loads(stats.stdout)["draining"] is True, stats.stderr
        assert checkid.proc.poll() is None
        checkid.proc.send_signal(signal.SIGTERM)  # the second one: stop now, not in 600 s
        assert checkid.proc.wait(SECONDS) == 0
        log = checkid.log.read_text()
        assert "leaving the pool" in log and "SIGTERM again" in log and "Traceback" not in log
    finally:
        checkid.stop()


def connect_refused(port: int) -> bool:
    """Whether a new connection to ``port`` is refused (an accepted one is closed at once)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            return False
    except OSError as e:
        if e.errno == errno.ECONNREFUSED:
            return True
        raise


def test_a_draining_host_refuses_new_connections_while_a_request_is_in_flight(dns_server, dns) -> None:
    """Once the workers stop accepting nothing holds the listening socket open: a new connect
    is refused, which the client (or HAProxy's redispatch) takes elsewhere at once, instead of
    completing into a backlog no one accepts from, to be reset when the last worker exits."""
    port = free_port()
    workdir = world_readable_tmpdir("checkid-drain-")
    toml = (f'[[listen]]\nprotocol = "policy"\naddress = "127.0.0.1:{port}"\n'
            f'[server]\nworkers = 2\nstate_dir = "{workdir / "state"}"\ngrace = 60\n'
            f'[dns]\nnameservers = ["{dns_server.address}"]\ntimeout = 20\ndecision_timeout = 20\n'
            f'[registry]\nzone = "registry.test"\n')
    checkid = Checkid(toml, workdir, [port]).start()
    try:
        assert wait_until(lambda: get_healthz(checkid.metrics_port)[0] == 200, "/healthz 200", SECONDS)
        assert checkid.proc is not None
        # a request in flight for a while: its registry answer comes 6 s late (within the
        # per-try timeout), time enough to watch the drain while the worker still answers it
        dns.set_fault("example.com.registry.test", delay=6.0)
        busy = socket.create_connection(("127.0.0.1", port), timeout=SECONDS)
        try:
            busy.sendall(pol.encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                                             "client_address": "192.0.2.1", "helo_name": "example.com",
                                             "sender": "", "recipient": "u@example.org", "instance": ""}))
            assert wait_until(lambda: dns.count("example.com.registry.test") >= 1, "the request in flight", SECONDS)
            checkid.proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: connect_refused(port), "a new connection refused", SECONDS)
            assert dns.count("example.com.registry.test") == 1 and checkid.proc.poll() is None
            busy.setblocking(False)
            try:
                early = busy.recv(4096)
            except BlockingIOError:
                early = None
            assert early is None, "the request in flight was answered before the refusal: no drain was watched"
            busy.setblocking(True)
            data = b""
            while not data.endswith(b"\n\n"):
                chunk = busy.recv(4096)
                assert chunk, "closed without a reply"
                data += chunk
        finally:
            busy.close()
        assert pol.parse_reply(data).startswith("PREPEND Authent: 192.0.2.1 example.com SPF1 PASS")
        assert checkid.proc.wait(SECONDS) == 0
        assert "Traceback" not in checkid.log.read_text()
    finally:
        checkid.stop()
