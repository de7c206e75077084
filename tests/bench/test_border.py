"""The border trace (bench/border.py): reproducible, the shape issue 15 asks for, and its zones
decide every request as its class says, served beside the small trace's."""
from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections import Counter

import dns.zone

from bench import load
from bench.border import BOT_NET, MTA_NET, BorderWorkload, merge_zones
from bench.workload import DNSBL, REGISTRY, Workload
from checkid.config import DnsList, PrescreenConfig, RegistryConfig
from checkid.engine.decision import Envelope
from checkid.engine.engine import Engine
from tests.bench.test_workload import EXPECTED
from tests.conftest import base_config, run
from testsupport.dnsserver import TestDnsServer, Zones


def test_same_seed_same_day_other_seed_other_day():
    a, b, c = BorderWorkload(500, 100, seed=7), BorderWorkload(500, 100, seed=7), BorderWorkload(500, 100, seed=8)
    assert a.requests == b.requests and a.zones() == b.zones()
    assert a.requests != c.requests


def test_the_default_day_has_the_shape_issue_15_asks_for():
    w = BorderWorkload()
    shape = w.shape()
    assert shape["client_addresses"] >= 200_000
    assert shape["sender_domains"] >= 20_000
    classes = shape["classes"]
    assert isinstance(classes, dict)
    assert set(classes) == {"spammer", "pass", "fail", "softfail", "unregistered"}
    assert 0.15 <= classes["spammer"] <= 0.5 and 0.15 <= classes["unregistered"] <= 0.5
    # Zipf over domains: the most popular domain sends far more than the median one
    by_domain = Counter(r.sender.split("@", 1)[1] for r in w.requests).most_common()
    assert by_domain[0][1] > 100 * by_domain[len(by_domain) // 2][1]


def test_multi_recipient_mail_is_one_request_per_recipient_and_one_milter_session(tmp_path):
    w = BorderWorkload(2000, 200, seed=3)
    per_message = Counter(r.message for r in w.requests)
    assert max(per_message.values()) > 1 and len(per_message) == 2000
    for group in load.messages(w.requests):
        assert len({(r.ip, r.helo, r.sender) for r in group}) == 1  # one message: one client, one sender
        assert len({r.rcpt for r in group}) == len(group)
    trace = load.write_trace("milter", w.requests, tmp_path / "milter.bin").read_bytes()
    sessions, rcpts, offset = 0, 0, 0
    while offset < len(trace):
        (count,) = struct.unpack_from("!I", trace, offset)
        offset += 4
        for _ in range(count):
            (length,) = struct.unpack_from("!I", trace, offset)
            rcpts += trace[offset + 8:offset + 9] == b"R"  # u32 length, then the packet's own u32 length, code
            offset += 4 + length
        sessions += 1
    assert (sessions, rcpts) == (2000, len(w.requests))


def test_addresses_stay_in_their_blocks_and_spf_authorizes_each_domains_own():
    w = BorderWorkload(1000, 300, seed=2)
    for ip in w.listed:
        assert ipaddress.IPv4Address(ip) in BOT_NET
    for d in w.domains:
        block = ipaddress.IPv4Network((d.first_ip, d.prefix))
        assert block.subnet_of(MTA_NET)
    passing = [r for r in w.requests if r.cls == "pass"]
    assert passing and all(ipaddress.IPv4Address(r.ip) in MTA_NET for r in passing)


def test_every_class_is_decided_as_intended_with_both_traces_served(tmp_path):
    border, small = BorderWorkload(600, 120, seed=5), Workload(60, 0, seed=5)
    zones = Zones(tmp_path)  # an empty folder: only the traces' zones
    for origin, text in merge_zones(small.zones(), border.zones()).items():
        zones.add_zone(dns.zone.from_text(text, origin=origin, relativize=False))
    with TestDnsServer(zones) as server:
        for name in small.faults():
            server.set_fault(name, drop=True)
        config = dataclasses.replace(
            base_config(server), registry=RegistryConfig(zone=REGISTRY),
            prescreen=PrescreenConfig(allow=(), dnsbl=(DnsList(DNSBL),)))
        engine = Engine(config)
        by_class: dict[str, list] = {}
        for s in border.senders:
            by_class.setdefault(s.cls, []).append(s)
        assert set(by_class) == set(EXPECTED) - {"timeout"}  # the border day has no DNS timeouts
        seen = set()
        for s in [*(x for senders in by_class.values() for x in senders[:25]), *small.senders]:
            d = run(engine.decide(Envelope(s.ip, None, s.helo, f"a@{s.domain}", ("u@example.org",))))
            assert d.action is EXPECTED[s.cls], (s, d)
            seen.add(s.cls)
        assert seen == set(EXPECTED)
