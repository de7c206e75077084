"""``checkid serve`` with 2 workers: persistent connections end up split evenly (issue 15).

The gate's waits are set far above any scheduling gap (``accept_wait``): the test checks the
gate's rule, not how soon a busy machine runs the less-loaded worker."""
from __future__ import annotations

import json
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

from testsupport.dnsserver import TestDnsServer
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir

#: bound on every wait below
WAIT_SECONDS = 30.0
CONNECTIONS = 16


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = world_readable_tmpdir("checkid-gate-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def open_by_worker(metrics_dir: Path) -> dict[int, int]:
    """Each worker's open connections, from its own gauge file (one per process), by pid."""
    out: dict[int, int] = {}
    for path in metrics_dir.glob("gauge_livesum_*.db"):
        total = 0.0
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[0] == "checkid_open_connections":
                total += value
        out[int(path.stem.rsplit("_", 1)[1])] = int(total)
    return out


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_persistent_connections_are_split_evenly_over_two_workers(dns_server: TestDnsServer, workdir: Path,
                                                                  kind: str) -> None:
    port = free_port()
    path = workdir / "policy.sock"
    address = f"127.0.0.1:{port}" if kind == "tcp" else f"unix:{path}"
    toml = f"""
[[listen]]
protocol = "policy"
address = "{address}"
[server]
workers = 2
accept_wait = {WAIT_SECONDS}
state_dir = "{workdir / 'state'}"
[dns]
nameservers = ["{dns_server.address}"]
timeout = 1.0
"""
    checkid = Checkid(toml, workdir, [port] if kind == "tcp" else [])
    clients: list[socket.socket] = []
    with checkid:
        wait_until(lambda: len(re.findall(r"worker \d serving", checkid.log.read_text())) == 2,
                   "two workers serving", WAIT_SECONDS)
        try:
            for _ in range(CONNECTIONS):
                if kind == "tcp":
                    clients.append(socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS))
                else:
                    client = socket.socket(socket.AF_UNIX)
                    clients.append(client)
                    client.settimeout(WAIT_SECONDS)
                    client.connect(str(path))
            metrics_dir = workdir / "state" / "metrics"

            def counted() -> dict[int, int] | None:
                split = open_by_worker(metrics_dir)
                return split if sum(split.values()) == CONNECTIONS else None

            split = wait_until(counted, "every connection counted", WAIT_SECONDS)
            assert split is not None
            shares = sorted(split.values())
            # accept_wait well past any scheduling gap: each worker takes a connection only when
            # the other has no fewer, so the counts never differ by more than one
            assert len(shares) == 2 and shares[1] - shares[0] <= 1, split
        finally:
            for client in clients:
                client.close()
