"""Fleet state on Redis at the level of ``checkid serve`` (issue 16, docs/fleet.md): two instances,
A and B (two workers each, distinct ports on loopback, as two hosts), one real redis-server and
the test DNS server.

- An address A refuses (a local block list only A has) and refuses again is learned as a fleet
  block; B refuses it at the pre-screen naming the block, without a DNS query for it; the block
  expires.
- Redis stopped under load on both instances: no decision fails, each instance's ``/metrics``
  shows ``checkid_fleet_up`` 0 and ``checkid_fleet_fallbacks_total`` grown; Redis started again on
  the same port: ``checkid_fleet_up`` 1 on both, and a new block is learned and shared.
- ``checkid cache flush NAME`` on A reaches B's workers.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testsupport.dnsserver import TestDnsServer
from testsupport.policy import ask
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir
from testsupport.redisserver import RedisServer

#: bound on every wait
SECONDS = 30.0
WORKERS = 2
#: A's local block list holds this /24; no DNSBL lists it, so only the fleet makes B refuse it
LOCAL_BLOCKED = "198.51.100.0/24"
FIRST, SECOND = "198.51.100.7", "198.51.100.8"
DNSBL_NAME = "7.100.51.198.zen.spamhaus.org"
BLOCK_AFTER = 3
#: the block's life: the test asks B about it right after B learned it, so this bounds how
#: long a busy machine may take between the two (as generous as the tests' other waits), and
#: the test then waits it out to see the block lapse
BLOCK_SECONDS = 30
#: the load phase: per client thread, at most this many decisions, or this long
LOAD_COUNT, LOAD_SECONDS = 50_000, 300.0
#: decisions each client makes after an event, to show that decisions went on
AFTER = 50
CLEAN, LISTED = "192.0.2.1", "203.0.113.10"  # accepted; refused by the test zen.spamhaus.org


def metric(port: int, name: str, **labels: str) -> float | None:
    """The sum of ``name``'s samples (matching ``labels``) at 127.0.0.1:``port``/metrics, None
    when it has none."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = [s.value for f in text_string_to_metric_families(body) for s in f.samples
              if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(values) if values else None


def command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "checkid", *args], capture_output=True, text=True, timeout=90,
                          env={**os.environ})


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer(world_readable_tmpdir("checkid-redis-"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def instance(name: str, dns: TestDnsServer, redis: RedisServer, extra: str = "") -> Checkid:
    workdir = world_readable_tmpdir(f"checkid-fleet-{name}-")
    port = free_port()
    toml = (f'[[listen]]\nprotocol = "policy"\naddress = "127.0.0.1:{port}"\n'
            f'[dns]\nnameservers = ["{dns.address}"]\ntimeout = 1.0\n[registry]\nzone = "registry.test"\n'
            f'[fleet]\nredis = "{redis.url}"\nblock_after = {BLOCK_AFTER}\nblock_seconds = {BLOCK_SECONDS}\n'
            f'budget_ms = 1000\nkey_prefix = "itest{redis.port}:"\n' + extra)
    d = Checkid(toml, workdir, [port], workers=WORKERS)
    d.port = port  # type: ignore[attr-defined]
    return d


@pytest.fixture(scope="module")
def hosts(dns_server: TestDnsServer, redis: RedisServer) -> Iterator[tuple[Checkid, Checkid]]:
    block_file = world_readable_tmpdir("checkid-fleet-lists-") / "local.txt"
    block_file.write_text(f"{LOCAL_BLOCKED}\n")
    a = instance("a", dns_server, redis, f'[prescreen]\nblock_files = ["{block_file}"]\n')
    b = instance("b", dns_server, redis)
    started: list[Checkid] = []
    try:
        for d in (a, b):
            d.start()
            started.append(d)
        yield a, b
    finally:
        for d in started:
            d.stop()


def following(*instances: Checkid) -> bool:
    return all(metric(d.metrics_port, "checkid_fleet_up") == 1 for d in instances)


def test_a_block_learned_on_a_refuses_at_b_without_dns_and_expires(hosts, dns_server):
    a, b = hosts
    wait_until(lambda: following(a, b), "both instances following the fleet", SECONDS)
    for _ in range(BLOCK_AFTER):
        assert ask(a.port, ip=FIRST).startswith("5"), "A's local block list refuses it"
    # every worker of B learned it (the metric is synced once a tick)
    wait_until(lambda: (metric(b.metrics_port, "checkid_fleet_blocks_learned_total", kind="ip") or 0) >= WORKERS,
               "the block reaching B's workers", SECONDS)
    dns_server.reset_counts()
    for _ in range(4):  # both workers, and the memoized refusal
        reply = ask(b.port, ip=FIRST)
        assert reply.startswith("5") and "fleet block" in reply and FIRST in reply, reply
    assert dns_server.count(DNSBL_NAME) == 0
    wait_until(lambda: metric(b.metrics_port, "checkid_list_hits_total", stage="prescreen", list="fleet block"),
               "B's fleet block refusals counted", SECONDS)
    # the block lapses after block_seconds: B decides on the address itself again, asking the
    # DNSBL (whatever it then decides: a refusal of its own is counted, and may block it anew)
    wait_until(lambda: "fleet block" not in ask(b.port, ip=FIRST), "the block expired on B", SECONDS + BLOCK_SECONDS)
    assert dns_server.count(DNSBL_NAME) >= 1


def test_a_flush_on_a_reaches_the_workers_of_b(hosts):
    a, b = hosts
    wait_until(lambda: following(a, b), "both instances following the fleet", SECONDS)
    out = command("cache", "flush", "example.com", "-c", str(a.config))
    assert out.returncode == 0, out.stderr
    assert f"{2 * WORKERS} workers subscribed" in out.stdout, out.stdout
    log: Path = b.log
    wait_until(lambda: log.read_text().count("fleet flush of example.com applied") >= WORKERS,
               "the flush applied by every worker of B", SECONDS)


class Load(threading.Thread):
    """Policy requests to one instance until told to stop, or LOAD_COUNT, or LOAD_SECONDS; every
    failed decision (no reply, or a 4xx/DEFER) kept."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.done = 0
        self.failures: list[str] = []
        self.halt = threading.Event()
        self.ran_out = False

    def run(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        while not self.halt.is_set():
            if self.done >= LOAD_COUNT or time.monotonic() > deadline:
                self.ran_out = True
                return
            try:
                reply = ask(self.port, ip=LISTED if self.done % 2 else CLEAN)
                if reply.startswith(("4", "DEFER")):
                    self.failures.append(reply)
            except OSError as e:
                self.failures.append(repr(e))
            self.done += 1

    def after(self, n: int) -> None:
        """Wait until ``n`` more decisions were made from now."""
        start = self.done
        wait_until(lambda: self.done >= start + n or self.ran_out, f"{n} decisions on port {self.port}", SECONDS)
        assert not self.ran_out, "the load ran out before the test saw what it waits for"


def fallbacks(d: Checkid) -> float:
    return metric(d.metrics_port, "checkid_fleet_fallbacks_total") or 0.0


def test_redis_stopped_under_load_fails_no_decision_and_the_fleet_resumes(hosts, redis):
    a, b = hosts
    wait_until(lambda: following(a, b), "both instances following the fleet", SECONDS)
    before = {d.port: fallbacks(d) for d in (a, b)}
    loads = [Load(d.port) for d in (a, b)]
    for load in loads:
        load.start()
    try:
        for load in loads:
            load.after(AFTER)
        redis.stop()
        for d in (a, b):
            wait_until(lambda: metric(d.metrics_port, "checkid_fleet_up") == 0, f"{d.port}: fleet_up 0", SECONDS)
            wait_until(lambda: fallbacks(d) > before[d.port], f"{d.port}: the fallbacks counted", SECONDS)
        for load in loads:
            load.after(AFTER)
    finally:
        for load in loads:
            load.halt.set()
        for load in loads:
            load.join(SECONDS)
    assert [f for load in loads for f in load.failures] == []

    redis.start()
    wait_until(lambda: following(a, b), "both instances following the fleet again", SECONDS)
    for _ in range(BLOCK_AFTER):
        assert ask(a.port, ip=SECOND).startswith("5")
    wait_until(lambda: "fleet block" in ask(b.port, ip=SECOND), "the new block shared with B", SECONDS)
