"""Faults of the disk under a running daemon (issue 14): the state directory full (a small
tmpfs), a corrupt LMDB file at start, a metrics directory that cannot be written. Decisions
continue; each degradation is logged and counted (``checkid_degraded_total{what}``)."""
from __future__ import annotations

import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import record, size
from tests.reliability.clients import PolicyClient, RpcClient, daemon_config, right
from testsupport.dnsserver import TestDnsServer
from testsupport.policy import ask
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir

#: bound on every wait
SECONDS = 30.0


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = world_readable_tmpdir("checkid-faults-disk-")
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """tmpfs mounts a test makes (CI runs as root); each unmounted after it, whatever happened."""
    made: list[Path] = []
    yield made
    for where in reversed(made):
        subprocess.run(["umount", "-l", str(where)], check=False)


def mount_tmpfs(where: Path, mounts: list[Path], options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    mounts.append(where)


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
                                                                          mounts: list[Path]) -> None:
    blocked = workdir / "ro-metrics"
    mount_tmpfs(blocked, mounts, "ro,size=64k")  # root ignores modes: a read-only mount stops it
    checkid, policy, rpc = start(dns, workdir, extra=f'[metrics]\naddress = "127.0.0.1:{free_port()}"\n'
                                                    f'dir = "{blocked}"\n')
    try:
        got = answers(policy, rpc, 5)
        assert all(right(a) for a in got), got
        assert "metrics directory" in checkid.log.read_text()
    finally:
        checkid.stop()


def test_a_full_state_directory_fails_cache_writes_and_decisions_continue(dns: TestDnsServer, workdir: Path,
                                                                          mounts: list[Path]) -> None:
    state = workdir / "state"
    mount_tmpfs(state, mounts, "size=4m,mode=0755")
    # the metric files stay off the full disk here: prometheus_client maps them sparse, and a
    # new worker's file on a full disk dies of SIGBUS (left open, see the issue-14 report)
    metrics = f'[metrics]\naddress = "127.0.0.1:{free_port()}"\ndir = "{workdir / "metrics"}"\n'
    checkid, policy, rpc = start(dns, workdir, extra=metrics)
    try:
        assert all(right(a) for a in answers(policy, rpc, 2))
        with open(state / "filler", "wb") as filler:  # fill the disk to its last block
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass
        # new HELO names: every decision misses the cache and writes to the full disk
        n = size(20, 2000)
        got = [ask(policy, helo=f"h{i}.example.com", timeout=SECONDS) for i in range(n)]
        assert all(a for a in got), got
        assert all(right(a) for a in answers(policy, rpc, 3))
        log = checkid.log.read_text()
        assert "SIGBUS" not in log and "killed by" not in log
        # a write that found no room was logged once (throttled) and counted; small writes may
        # still fit in pages LMDB already holds, so how many failed is recorded, not asserted
        record("faults_disk_full", decisions=n, answered=len(got), write_failures_logged=log.count("write failed"))
    finally:
        checkid.stop()
