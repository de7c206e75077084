"""Restarts under load (issue 14): kill -9 of a worker, then SIGHUP after SIGHUP, while
persistent policy and MessagePack-RPC clients that retry once (as Postfix does) keep asking.
A reset is allowed (the client retries); a request lost twice, or a wrong answer, is not.

The load is bounded by count and by time; each reload is waited for until the master records
its outcome (``checkid reload``'s wait, :func:`checkid.runtime.control.wait_for_reload`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from checkid.runtime import control
from tests.reliability import record, size
from tests.reliability.clients import PolicyClient, RpcClient, daemon_config, right
from testsupport.dnsserver import TestDnsServer
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir

#: bound on every wait (a reload's outcome, workers serving, the load's threads ending)
SECONDS = 30.0
WORKERS = 2
#: persistent clients of each protocol, each in its own thread
CLIENTS = 2
#: bound on the load's duration: it stops when the test is done, or at the latest then; above
#: the longest the phases may wait (start, the kill, 20 reloads: SECONDS each)
LOAD_SECONDS = 900.0
#: bound on each client's requests: more than any machine asks in LOAD_SECONDS (a count a fast
#: machine could reach before the reloads are done would end the load early and fail the test)
LOAD_COUNT = 50_000_000


@dataclass
class Load:
    """Persistent retrying clients, each asking in its own thread until stopped or its count
    is reached; what they saw."""

    policy_port: int
    rpc_port: int
    #: requests per client at most
    count: int
    stop: threading.Event = field(default_factory=threading.Event)
    clients: list[PolicyClient | RpcClient] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    requests: int = 0
    wrong: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.clients = [*(PolicyClient(self.policy_port) for _ in range(CLIENTS)),
                        *(RpcClient(self.rpc_port) for _ in range(CLIENTS))]
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in self.clients]
        for t in self.threads:
            t.start()

    def _run(self, client: PolicyClient | RpcClient) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        try:
            for _ in range(self.count):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                answer = client.ask()
                with self.lock:
                    self.requests += 1
                    if answer is not None and not right(answer):
                        self.wrong.append(answer)
        finally:
            client.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(SECONDS)
        assert not any(t.is_alive() for t in self.threads), "a load thread did not end"

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    @property
    def resets(self) -> int:
        return sum(c.resets for c in self.clients)

    @property
    def rsts(self) -> int:
        return sum(c.rsts for c in self.clients)

    @property
    def lost(self) -> int:
        return sum(c.lost for c in self.clients)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = world_readable_tmpdir("checkid-faults-restarts-")
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def serving(state_dir: Path, generation: int | None = None) -> list[int]:
    """The PIDs of the workers of the current generation, once all of them serve (else [])."""
    state = control.read_json(state_dir / control.STATE_FILE) or {}
    if generation is not None and state.get("generation") != generation:
        return []
    pids = [w["pid"] for w in state.get("workers", []) if w.get("serving") and not w.get("retiring")
            and w.get("generation") == state.get("generation")]
    return sorted(pids) if len(pids) == WORKERS else []


def test_kill_9_and_sighups_under_load_lose_no_request_of_a_retrying_client(dns: TestDnsServer,
                                                                           workdir: Path) -> None:
    reloads = size(3, 20)
    state_dir = workdir / "state"
    policy, rpc = free_port(), free_port()
    checkid = Checkid(daemon_config(dns, policy, rpc, state_dir, workers=WORKERS), workdir, [policy, rpc]).start()
    load = Load(policy, rpc, count=LOAD_COUNT)
    try:
        before = wait_until(lambda: serving(state_dir), "workers serving", SECONDS)
        load.start()
        wait_until(lambda: load.requests >= 50, "the load answered", SECONDS)

        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        after = wait_until(lambda: (pids := serving(state_dir)) and victim not in pids and pids,
                           "a worker in place of the one killed", SECONDS)
        assert set(before) - {victim} <= set(after)  # the other worker lived on
        requests_at_kill = load.requests

        outcomes = []
        for _ in range(reloads):
            outcome = control.wait_for_reload(state_dir, SECONDS)
            outcomes.append(outcome)
            assert outcome["result"] == "ok", outcome
        final = wait_until(lambda: serving(state_dir), "the last generation serving", SECONDS)
        assert not set(final) & set(after)  # every worker was replaced
        assert load.running, "the load ended before the reloads did"
        wait_until(lambda: load.requests >= requests_at_kill + 50, "the load answered after the reloads", SECONDS)
        load.finish()

        log = checkid.log.read_text()
        record("faults_restarts", workers=WORKERS, clients=2 * CLIENTS, kills=1, reloads=len(outcomes),
               requests=load.requests, resets=load.resets, rsts=load.rsts, lost=load.lost, wrong=len(load.wrong),
               sigbus="SIGBUS" in log)
        assert load.lost == 0, (load.lost, load.resets, load.requests)
        assert not load.wrong, load.wrong[:5]
        assert checkid.proc is not None and checkid.proc.poll() is None  # the master lived on
    finally:
        load.finish()
        checkid.stop()
