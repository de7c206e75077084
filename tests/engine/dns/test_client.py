"""The DNS layer: outcomes, positive and negative caching, clamps, errors, shared queries."""
from __future__ import annotations

import asyncio

import pytest

from checkid.engine.dns.cache import MemoryCache
from checkid.config import DnsConfig
from checkid.engine.dns.client import DnsClient, Outcome
from tests.conftest import run


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def client(server, clock, **dns_config):
    config = DnsConfig(nameservers=(server.address,), timeout=0.4, **dns_config)
    return DnsClient(config, MemoryCache(1000), clock)


def test_answer_is_cached_for_its_ttl(dns, clock):
    c = client(dns, clock)
    first = run(c.resolve("example.com", "TXT"))
    assert first.outcome is Outcome.ANSWER and first.records == ((b"v=spf1 ip4:192.0.2.0/24 -all",),)
    assert first.ttl == 3600
    clock.now += 3599
    assert run(c.resolve("EXAMPLE.com.", "TXT")) == first
    assert dns.count("example.com", "TXT") == 1
    clock.now += 2
    run(c.resolve("example.com", "TXT"))
    assert dns.count("example.com", "TXT") == 2


def test_nxdomain_is_cached_with_the_soa_minimum(dns, clock):
    c = client(dns, clock)
    answer = run(c.resolve("nothing.example.com", "A"))
    assert (answer.outcome, answer.ttl) == (Outcome.NXDOMAIN, 300)  # SOA minimum 300 < SOA TTL 3600
    clock.now += 299
    run(c.resolve("nothing.example.com", "A"))
    assert dns.count("nothing.example.com") == 1
    clock.now += 2
    run(c.resolve("nothing.example.com", "A"))
    assert dns.count("nothing.example.com") == 2


def test_nodata_is_cached_and_distinct_from_nxdomain(dns, clock):
    c = client(dns, clock)
    answer = run(c.resolve("mx.example.com", "TXT"))
    assert (answer.outcome, answer.ttl) == (Outcome.NODATA, 300)
    run(c.resolve("mx.example.com", "TXT"))
    assert dns.count("mx.example.com", "TXT") == 1


def test_negative_ttl_is_clamped(dns, clock):
    c = client(dns, clock, max_negative_ttl=10)
    assert run(c.resolve("nothing.example.com", "A")).ttl == 10


@pytest.mark.parametrize("cfg, ttl", [({"max_ttl": 60}, 60), ({"min_ttl": 7200, "max_ttl": 9000}, 7200)])
def test_positive_ttl_is_clamped(dns, clock, cfg, ttl):
    assert run(client(dns, clock, **cfg).resolve("example.com", "TXT")).ttl == ttl


@pytest.mark.parametrize("fault, outcome", [({"drop": True}, Outcome.TIMEOUT), ({"servfail": True}, Outcome.SERVFAIL)])
def test_errors_are_never_cached(dns, clock, fault, outcome):
    c = client(dns, clock)
    dns.set_fault("example.com", **fault)
    answer = run(c.resolve("example.com", "TXT"))
    assert answer.outcome is outcome and answer.is_error and answer.ttl == 0
    dns.clear_faults()
    assert run(c.resolve("example.com", "TXT")).outcome is Outcome.ANSWER


def test_names_outside_the_served_zones_are_errors_not_empty(dns, clock):
    # the test server REFUSES them: nothing leaves the machine, and it is not "no record"
    assert run(client(dns, clock).resolve("example.org", "A")).outcome is Outcome.SERVFAIL


def test_truncated_udp_answer_is_retried_over_tcp(dns, clock):
    dns.set_fault("example.com", truncate=True)
    answer = run(client(dns, clock).resolve("example.com", "TXT"))
    assert answer.outcome is Outcome.ANSWER
    assert dns.count("example.com", "TXT") == 2  # once over UDP (truncated), once over TCP


def test_cname_is_followed_with_the_chain_minimum_ttl(dns, clock):
    answer = run(client(dns, clock).resolve("cname-spf.example", "TXT"))
    assert answer.outcome is Outcome.ANSWER
    assert answer.records == ((b"v=spf1 include:inc-a.example include:inc-b.example -all",),)
    assert answer.ttl == 60  # the CNAME's TTL, not the target's 600


def test_concurrent_identical_lookups_share_one_query(dns, clock):
    dns.set_fault("example.com", delay=0.1)
    c = client(dns, clock)

    async def many():
        return await asyncio.gather(*(c.resolve("example.com", "TXT") for _ in range(20)))

    answers = run(many())
    assert len(set(answers)) == 1 and answers[0].outcome is Outcome.ANSWER
    assert dns.count("example.com", "TXT") == 1


def test_a_cancelled_waiter_does_not_lose_the_answer(dns, clock):
    dns.set_fault("example.com", delay=0.15)
    c = client(dns, clock)

    async def impatient():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await c.resolve("example.com", "TXT")
        return await c.resolve("example.com", "TXT")

    assert run(impatient()).outcome is Outcome.ANSWER
    assert dns.count("example.com", "TXT") == 1


def test_a_name_too_long_to_exist_is_nxdomain_without_a_query(dns, clock):
    answer = run(client(dns, clock).resolve(".".join(["a" * 63] * 4) + ".example", "TXT"))
    assert answer.outcome is Outcome.NXDOMAIN and answer.ttl == 0
    assert dns.total == 0


def test_cname_loop_is_nodata_and_cached(dns, clock):
    c = client(dns, clock)
    answer = run(c.resolve("cname-loop1.example", "A"))
    assert answer.outcome is Outcome.NODATA and not answer.is_error
    assert answer.ttl > 0
    assert run(c.resolve("cname-loop1.example", "A")) == answer
    assert dns.count("cname-loop1.example", "A") == 1


def closed_udp_port() -> str:
    """``127.0.0.1:<port>`` where nothing listens: a query there draws an ICMP port unreachable."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_a_closed_dns_port_is_an_error_at_once_not_a_timeout(clock):
    # timeout 4 s: a silent server would end TIMEOUT; the refused port ends SERVFAIL, counted
    c = DnsClient(DnsConfig(nameservers=(closed_udp_port(),), timeout=4.0), MemoryCache(1000), clock)
    answer = run(c.resolve("example.com", "TXT"))
    assert answer.outcome is Outcome.SERVFAIL and answer.ttl == 0
    assert c.counts[("dns_unreachable",)] == 1
    assert c.counts[("dns_queries", "TXT", "servfail")] == 1


def test_a_closed_dns_port_fails_over_to_the_next_nameserver(dns, clock):
    config = DnsConfig(nameservers=(closed_udp_port(), dns.address), timeout=4.0)
    c = DnsClient(config, MemoryCache(1000), clock)
    answer = run(c.resolve("example.com", "TXT"))
    assert answer.outcome is Outcome.ANSWER and answer.records == ((b"v=spf1 ip4:192.0.2.0/24 -all",),)
    # the first server was dropped on its unreachable, not after a try's timeout
    assert c.counts[("dns_unreachable",)] == 1 and dns.count("example.com", "TXT") == 1
