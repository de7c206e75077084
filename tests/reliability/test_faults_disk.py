"""Faults of the disk under a running daemon (issue 14): the state directory full (a small
tmpfs), a corrupt LMDB file at start, a metrics directory that cannot be written. Decisions
continue; each degradation is logged and counted (``checkid_degraded_total{what}``)."""
from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.reliability import record, size
from tests.reliability.clients import PolicyClient, RpcClient, daemon_config, right
from testsupport.disk import fill, tmpfs
from testsupport.dnsserver import TestDnsServer
from testsupport.policy import ask
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir

#: bound on every wait
SECONDS = 30.0
#: workers of the daemon these tests start (daemon_config's default)
WORKERS = 2


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = world_readable_tmpdir("checkid-faults-disk-")
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def mounts() -> Iterator[ExitStack]:
    """Where a test mounts its tmpfs (CI runs as root); each unmounted after it."""
    with ExitStack() as stack:
        yield stack


def degraded(metrics_port: int, what: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    prefix = f'checkid_degraded_total{{what="{what}"}} '
    return sum(float(line[len(prefix):]) for line in body.splitlines() if line.startswith(prefix))


def start(dns: TestDnsServer, workdir: Path, extra: str = "") -> tuple[Checkid, int, int]:
    policy, rpc = free_port(), free_port()
    checkid = Checkid(daemon_config(dns, policy, rpc, workdir / "state", extra=extra), workdir, [policy, rpc])
    return checkid.start(), policy, rpc


def answers(policy: int, rpc: int, n: int) -> list[str | None]:
    p, r = PolicyClient(policy), RpcClient(rpc)
    try:
        return [c.ask() for _ in range(n) for c in (p, r)]
    finally:
        p.close()
        r.close()


def test_a_corrupt_cache_file_at_start_is_set_aside_and_decisions_continue(dns: TestDnsServer,
                                                                            workdir: Path) -> None:
    cache = workdir / "state" / "cache"
    cache.mkdir(parents=True)
    (cache / "data.mdb").write_bytes(os.urandom(65536))
    checkid, policy, rpc = start(dns, workdir)
    try:
        got = answers(policy, rpc, 5)
        assert all(right(a) for a in got), got
        assert "not a usable LMDB file" in checkid.log.read_text()
        assert wait_until(lambda: degraded(checkid.metrics_port, "cache_corrupt"), "cache_corrupt counted",
                          SECONDS) == 1
    finally:
        checkid.stop()


def test_an_unwritable_metrics_directory_gives_way_and_decisions_continue(dns: TestDnsServer, workdir: Path,
                                                                          mounts: ExitStack) -> None:
    blocked = workdir / "ro-metrics"
    mounts.enter_context(tmpfs(blocked, "ro,size=64k"))  # root ignores modes: a read-only mount stops it
    checkid, policy, rpc = start(dns, workdir, extra=f'[metrics]\naddress = "127.0.0.1:{free_port()}"\n'
                                                    f'dir = "{blocked}"\n')
    try:
        got = answers(policy, rpc, 5)
        assert all(right(a) for a in got), got
        assert "metrics directory" in checkid.log.read_text()
    finally:
        checkid.stop()
        for word in checkid.log.read_text().split():  # the private directory, named in its log line
            if word.startswith("/tmp/checkid-metrics-"):
                subprocess.run(["rm", "-rf", word], check=False)


def serving_workers(checkid: Checkid) -> list[int]:
    """The PIDs of the master's workers once each has logged that it serves, and no other
    is there (else []). Read from /proc and the log: the full disk holds master.json back."""
    assert checkid.proc is not None
    master = checkid.proc.pid
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return []
    pids = []
    for pid in map(int, children):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("checkid-w"):
                pids.append(pid)
        except OSError:
            continue
    log = checkid.log.read_text()
    return sorted(pids) if len(pids) == WORKERS and all(f"serving (pid {p})" in log for p in pids) else []


def test_a_full_state_directory_fails_cache_writes_and_decisions_continue(dns: TestDnsServer, workdir: Path,
                                                                          mounts: ExitStack) -> None:
    state = workdir / "state"
    mounts.enter_context(tmpfs(state, "size=4m,mode=0755"))
    # the default layout: the metric files in state/metrics, on the disk that fills
    checkid, policy, rpc = start(dns, workdir)
    try:
        assert all(right(a) for a in answers(policy, rpc, 2))
        before = wait_until(lambda: serving_workers(checkid), "workers serving", SECONDS)
        fill(state)
        # new HELO names: every decision misses the cache and writes to the full disk
        n = size(20, 2000)
        got = [ask(policy, helo=f"h{i}.example.com", timeout=SECONDS) for i in range(n)]
        assert all(a for a in got), got
        assert all(right(a) for a in answers(policy, rpc, 3))
        # a worker started on the full disk (a respawn, a reload) must find no room for its
        # metric files and live on: prometheus_client maps them, and a sparse page with no
        # block behind it is SIGBUS
        os.kill(before[0], signal.SIGKILL)
        after = wait_until(lambda: (pids := serving_workers(checkid)) and before[0] not in pids and pids,
                           "a worker in place of the one killed", SECONDS)
        assert all(right(a) for a in answers(policy, rpc, 3))
        assert checkid.proc is not None
        os.kill(checkid.proc.pid, signal.SIGHUP)  # a reload: a whole new generation on the full disk
        final = wait_until(lambda: (pids := serving_workers(checkid)) and not set(pids) & set(after) and pids,
                           "the reloaded generation serving", SECONDS)
        got = [ask(policy, helo=f"r{i}.example.com", timeout=SECONDS) for i in range(n)]
        assert all(a for a in got), got
        assert all(right(a) for a in answers(policy, rpc, 3))
        assert serving_workers(checkid) == final  # none of them died meanwhile
        log = checkid.log.read_text()
        assert "SIGBUS" not in log and "killed by" not in log.split("killed by SIGKILL", 1)[-1]
        assert log.count("killed by") == 1  # the one this test killed
        assert "metric file" in log  # the degradation, logged
        # a write that found no room was logged once (throttled) and counted; small writes may
        # still fit in pages LMDB already holds, so how many failed is recorded, not asserted
        record("faults_disk_full", decisions=2 * n, answered=2 * n, write_failures_logged=log.count("write failed"),
               metrics_degraded_logged=log.count("metric file"))
    finally:
        checkid.stop()
