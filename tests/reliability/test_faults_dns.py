"""DNS faults under a running daemon (issue 14): the nameserver down (a port nothing listens
on), dropping every query, answering SERVFAIL, and answering only after 10 s. Every decision,
on the policy protocol and MessagePack-RPC, is answered with the configured temporary-error
result ([policy] on_temperror = "tempfail": the policy protocol's 451 4.4.3, or its
DEFER_IF_PERMIT where [postfix_policy] tempfail says so; RPC's TEMPFAIL 451) within the
engine's deadline, no worker dies, and once the fault is gone the next decision is right again.

The faults of the test DNS server are per name: a test first asks the valid requests with no
fault and puts the fault on every name they made the daemon ask. That daemon caches nothing
(TTLs clamped to 0, no shared layer), so every decision asks the server and a fault applies,
and clears, at once.
"""
from __future__ import annotations

import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability import record, size
from tests.reliability.clients import PolicyClient, RpcClient, counter, daemon_config, right
from tests.reliability.daemon import Daemon, Ports
from testsupport.dnsserver import TestDnsServer
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir

#: seconds one lookup may take, retries included: short, so that an answer after 10 s is a
#: timeout and a test lasts seconds
DNS_TIMEOUT = 0.5
#: the engine's deadline for a whole decision (a decision asks up to three names in turn)
DECISION_TIMEOUT = 2.0
#: the bound asserted on any one decision, a retry included: the engine's deadline, tripled
#: for a loaded CI machine (what was measured is recorded, not asserted)
BOUND = 3 * DECISION_TIMEOUT
#: bound on waiting for the daemon's counters
SECONDS = 30.0
#: persistent clients per protocol asking at once
CLIENTS = 4
#: requests each client asks under a fault
REQUESTS = size(3, 50)
#: nothing cached: every decision asks the DNS server
NO_CACHE = "min_ttl = 0\nmax_ttl = 0\nmax_negative_ttl = 0"
NO_SHARED_CACHE = "[cache]\nshared = false\n"

#: the configured result by protocol: [postfix_policy] tempfail = "reply" answers checkid's
#: 4xx (docs/postfix.md); RPC answers the TEMPFAIL action with its code (docs/msgpack-rpc.md)
TEMPFAIL_REPLY = {"policy": "451 4.4.3 ", "msgpack-rpc": "TEMPFAIL 451 "}
#: the same with [postfix_policy] tempfail = "defer_if_permit"
TEMPFAIL_DEFER = {"policy": "DEFER_IF_PERMIT ", "msgpack-rpc": "TEMPFAIL 451 "}

#: the test DNS server's faults (testsupport.dnsserver.Fault), by name
FAULTS: dict[str, dict[str, float | bool]] = {
    "drop": {"drop": True},
    "servfail": {"servfail": True},
    "late": {"delay": 10.0},
}


@dataclass
class Running:
    checkid: Checkid
    daemon: Daemon
    policy: int
    rpc: int


#: one request's protocol, its answer (None: lost) and the seconds it took
Answer = tuple[str, str | None, float]


@dataclass
class Asked:
    """What one barrage got: an :data:`Answer` per request, and the requests lost."""

    answers: list[Answer]
    lost: int

    @property
    def seconds(self) -> list[float]:
        return [s for _, _, s in self.answers]


def start(dns: TestDnsServer, workdir: Path, nameserver: str | None = None, extra: str = "") -> Running:
    """A policy + RPC daemon that caches nothing, on ``nameserver`` (default: ``dns``)."""
    policy, rpc = free_port(), free_port()
    toml = daemon_config(dns, policy, rpc, workdir / "state", dns_timeout=DNS_TIMEOUT,
                         decision_timeout=DECISION_TIMEOUT, dns_lines=NO_CACHE, extra=NO_SHARED_CACHE + extra,
                         nameserver=nameserver)
    checkid = Checkid(toml, workdir, [policy, rpc]).start()
    daemon = Daemon(checkid, Ports(policy, rpc, 0, 0, 0), workdir / "state")
    return Running(checkid, daemon, policy, rpc)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = world_readable_tmpdir("checkid-faults-dns-")
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture(scope="module")
def running(dns_server: TestDnsServer) -> Iterator[Running]:
    """One daemon for the faults of the test DNS server (it caches nothing)."""
    path = world_readable_tmpdir("checkid-faults-dns-")
    r = start(dns_server, path)
    try:
        yield r
    finally:
        r.checkid.stop()
        subprocess.run(["rm", "-rf", str(path)], check=False)


def barrage(policy: int, rpc: int) -> Asked:
    """``CLIENTS`` persistent clients per protocol, each asking ``REQUESTS`` times, at once."""
    def one(make: Callable[[], PolicyClient | RpcClient], protocol: str) -> tuple[list[Answer], int]:
        client = make()
        out = []
        try:
            for _ in range(REQUESTS):
                began = time.monotonic()
                answer = client.ask()
                out.append((protocol, answer, time.monotonic() - began))
        finally:
            client.close()
        return out, client.lost
    with ThreadPoolExecutor(2 * CLIENTS) as pool:
        jobs = [pool.submit(one, lambda: PolicyClient(policy), "policy") for _ in range(CLIENTS)]
        jobs += [pool.submit(one, lambda: RpcClient(rpc), "msgpack-rpc") for _ in range(CLIENTS)]
        done = [job.result() for job in jobs]
    return Asked([a for answers, _ in done for a in answers], sum(lost for _, lost in done))


def valid(r: Running) -> list[str | None]:
    p, c = PolicyClient(r.policy), RpcClient(r.rpc)
    try:
        return [p.ask(), c.ask()]
    finally:
        p.close()
        c.close()


def wrong(asked: Asked, expected: dict[str, str]) -> list[tuple[str, str | None]]:
    return [(protocol, answer) for protocol, answer, _ in asked.answers
            if answer is None or not answer.startswith(expected[protocol])]


def figures(asked: Asked) -> dict[str, float]:
    seconds = sorted(asked.seconds)
    return {"decisions": len(seconds), "lost": asked.lost, "p50_s": round(statistics.median(seconds), 3),
            "max_s": round(seconds[-1], 3)}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_dns_fault_answers_every_decision_with_the_configured_tempfail_in_time(running: Running,
                                                                                 dns: TestDnsServer,
                                                                                 fault: str) -> None:
    dns.reset_counts()
    assert all(right(a) for a in valid(running))
    names = {name for name, _ in dns.queries}
    assert names, "the valid requests asked the DNS server nothing: the daemon caches"
    pids = running.daemon.serving()
    for name in names:
        dns.set_fault(name, **FAULTS[fault])
    dns.reset_counts()

    asked = barrage(running.policy, running.rpc)

    assert {name for name, _ in dns.queries} & names, "the fault was never met"
    assert asked.lost == 0
    assert not wrong(asked, TEMPFAIL_REPLY)
    assert max(asked.seconds) < BOUND, figures(asked)
    assert running.daemon.worker_pids() == pids, "a worker was replaced"
    dns.clear_faults()
    assert all(right(a) for a in valid(running)), "no right answer once the fault was gone"
    record(f"faults_dns_{fault}", **figures(asked))


def closed_udp_port() -> int:
    """A loopback UDP port nothing listens on (ICMP port unreachable answers a query)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dns_down_answers_every_decision_with_the_configured_defer_at_once(dns: TestDnsServer,
                                                                           workdir: Path) -> None:
    r = start(dns, workdir, nameserver=f"127.0.0.1:{closed_udp_port()}",
              extra='[postfix_policy]\ntempfail = "defer_if_permit"\n')
    try:
        pids = r.daemon.serving()
        asked = barrage(r.policy, r.rpc)
        assert asked.lost == 0
        assert not wrong(asked, TEMPFAIL_DEFER)
        assert max(asked.seconds) < BOUND, figures(asked)
        assert r.daemon.worker_pids() == pids, "a worker was replaced"
        # a closed port fails over at once, and is counted (workers publish counters a
        # moment later, so the count is awaited)
        wait_until(lambda: counter(r.checkid.metrics_port, "dns_unreachable") > 0, "dns_unreachable counted",
                   SECONDS)
        record("faults_dns_down", **figures(asked))
    finally:
        r.checkid.stop()
