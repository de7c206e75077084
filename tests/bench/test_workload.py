"""The benchmark workload: reproducible, in its fractions, and decided as its classes say."""
from __future__ import annotations

import dataclasses
from collections import Counter

import dns.zone

from bench.workload import DNSBL, DOMAINS, FRACTIONS, REGISTRY, Workload
from checkid.config import DnsList, PrescreenConfig, RegistryConfig
from checkid.engine.decision import Action, Envelope
from checkid.engine.engine import Engine
from tests.conftest import base_config, run
from testsupport.dnsserver import TestDnsServer, Zones

EXPECTED = {"spammer": Action.REJECT, "pass": Action.ACCEPT, "fail": Action.REJECT,
            "unregistered": Action.FILTER, "softfail": Action.FILTER, "timeout": Action.TEMPFAIL}


def test_same_seed_same_workload_other_seed_other_workload():
    a, b, c = Workload(200, 1000, seed=7), Workload(200, 1000, seed=7), Workload(200, 1000, seed=8)
    assert a.requests == b.requests and a.zones() == b.zones()
    assert a.requests != c.requests


def test_fractions_and_zipf_popularity():
    w = Workload(1000, 20_000, seed=3)
    shares = Counter(s.cls for s in w.senders)
    for cls, share in FRACTIONS.items():
        assert abs(shares[cls] / len(w.senders) - share) < 0.01
    by_sender = Counter(r.ip for r in w.requests).most_common()
    assert by_sender[0][1] > 20 * by_sender[len(by_sender) // 2][1]  # the head sends far more than the middle


def test_every_class_is_decided_as_intended(tmp_path):
    w = Workload(60, 0, seed=5)
    zones = Zones(tmp_path)  # an empty folder: only the workload's zones
    for origin, text in w.zones().items():
        zones.add_zone(dns.zone.from_text(text, origin=origin, relativize=False))
    with TestDnsServer(zones) as server:
        for name in w.faults():
            server.set_fault(name, drop=True)
        config = dataclasses.replace(
            base_config(server), registry=RegistryConfig(zone=REGISTRY),
            prescreen=PrescreenConfig(allow=(), dnsbl=(DnsList(DNSBL),)))
        engine = Engine(config)
        seen = set()
        for s in w.senders:
            d = run(engine.decide(Envelope(s.ip, None, s.helo, f"a@{s.domain}", ("u@example.org",))))
            assert d.action is EXPECTED[s.cls], (s, d)
            seen.add(s.cls)
        assert seen == set(FRACTIONS)
    assert all(DOMAINS in s.domain for s in w.senders)


def test_the_dns_server_adds_its_round_trip_time(tmp_path):
    from checkid.engine.dns.cache import MemoryCache
    from checkid.config import DnsConfig
    from checkid.engine.dns.client import DnsClient, Outcome

    w = Workload(10, 0, seed=1)
    zones = Zones(tmp_path)
    for origin, text in w.zones().items():
        zones.add_zone(dns.zone.from_text(text, origin=origin, relativize=False))
    outcomes = []
    for rtt in (0.0, 1.0):  # a client that waits 0.4 s gets its answer only without the RTT
        with TestDnsServer(zones, rtt=rtt) as server:
            client = DnsClient(DnsConfig(nameservers=(server.address,), timeout=0.4), MemoryCache(10))
            outcomes.append(run(client.resolve(w.senders[0].domain, "TXT")).outcome)
    assert outcomes == [Outcome.ANSWER, Outcome.TIMEOUT]
