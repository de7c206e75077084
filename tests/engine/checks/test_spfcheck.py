"""SPF through the engine's cached DNS must give what pyspf gives over plain DNS."""
from __future__ import annotations

import threading
import warnings
from collections.abc import Hashable
from typing import Any

import dns.nameserver as dns_nameserver
import dns.resolver as dns_resolver
import pytest
import spf

from checkid.config import DnsConfig
from checkid.engine import policyapi
from checkid.engine.checks import spfcheck
from checkid.engine.checks.spfcheck import SpfChecker
from checkid.engine.dns.cache import MemoryCache
from checkid.engine.dns.client import DnsClient
from checkid.engine.result import Result
from tests.conftest import run

# (client ip, MAIL FROM, HELO): each exercises a part of RFC 7208 over the zone example.zone
CASES = [
    ("192.0.2.1", "a@example.com", "h.example"),           # ip4 pass
    ("198.51.100.1", "a@example.com", "h.example"),        # -all fail
    ("198.51.100.3", "a@inc.example", "h.example"),        # include pass
    ("192.0.2.200", "a@inc.example", "h.example"),         # include ~all: no match, -all
    ("198.51.100.3", "a@redir.example", "h.example"),      # redirect
    ("192.0.2.11", "a@mxs.example", "h.example"),          # mx
    ("2001:db8::11", "a@mxs.example", "h.example"),        # mx over AAAA
    ("192.0.2.99", "a@mxs.example", "h.example"),          # mx fail
    ("192.0.2.20", "a@amech.example", "h.example"),        # a:host
    ("198.51.100.200", "a@amech.example", "h.example"),    # a/24
    ("198.51.100.3", "a@cname-spf.example", "h.example"),  # the SPF record behind a CNAME
    ("198.51.100.3", "a@cname-in.example", "h.example"),   # include of a CNAME
    ("192.0.2.1", "a@void.example", "h.example"),          # three void lookups: permerror
    ("192.0.2.1", "a@two.example", "h.example"),           # two records: permerror
    ("192.0.2.1", "a@none.example", "h.example"),          # no SPF record: none
    ("192.0.2.1", "a@nxdomain.example", "h.example"),      # no such domain: none
    ("192.0.2.1", "a@exists.example", "h.example"),        # exists with a macro
    ("192.0.2.2", "a@exists.example", "h.example"),
    ("192.0.2.1", "bob@macro.example", "h.example"),       # %{l} macro
    ("192.0.2.1", "eve@macro.example", "h.example"),
    ("2001:db8::1", "a@ip6.example", "h.example"),         # ip6
    ("192.0.2.1", "a@neutral.example", "h.example"),       # ?all
    ("192.0.2.1", "a@loop.example", "h.example"),          # include loop
    ("192.0.2.1", "a@syntax.example", "h.example"),        # syntax error
    ("192.0.2.1", "a@toomany.example", "h.example"),       # over 10 lookups
    ("192.0.2.1", "a@ptrs.example", "h.example"),          # ptr with no PTR data
    ("192.0.2.1", "", "example.com"),                      # HELO identity
]


@pytest.fixture
def stock_resolver(dns):
    """dnspython's default resolver (what pyspf's stock lookup asks) on the test server."""
    stock = dns_resolver.Resolver(configure=False)
    host, port = dns.address.split(":")
    stock.nameservers = [dns_nameserver.Do53Nameserver(host, int(port))]
    saved = dns_resolver.default_resolver
    dns_resolver.default_resolver = stock
    yield stock
    dns_resolver.default_resolver = saved


@pytest.fixture
def plain_pyspf(stock_resolver):
    """pyspf with its own stock dnspython lookup, pointed at the test server."""
    def check(ip, sender, helo):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pyspf calls dns.resolver.query()
            return spf.query(i=ip, s=sender, h=helo, receiver="unknown").check()[0]

    return check


def checker(server, budget_ttl=86_400):
    cache = MemoryCache(1000)
    client = DnsClient(DnsConfig(nameservers=(server.address,), timeout=0.5), cache)
    return SpfChecker(client, cache, client.clock, max_ttl=budget_ttl)


def test_spf_results_equal_pyspf_over_plain_dns(dns, plain_pyspf):
    expected = [plain_pyspf(*case) for case in CASES]
    ours = checker(dns)

    async def all_cases():
        return [(await ours.check(*case)).result.lower() for case in CASES]

    got = run(all_cases())
    assert got == expected
    # the cases cover every result pyspf can give
    assert {"pass", "fail", "permerror", "none", "neutral"} <= set(expected)


def test_spf_warm_check_asks_no_dns_and_cold_check_never_blocks(dns):
    ours = checker(dns)

    async def twice():
        first = await ours.check("192.0.2.11", "a@mxs.example", "h.example")
        asked = dns.total
        second = await ours.check("192.0.2.11", "a@mxs.example", "h.example")
        third = await ours.check("192.0.2.10", "a@mxs.example", "h.example")  # new IP, same DNS data
        return first, second, third, asked

    first, second, third, asked = run(twice())
    assert first.result is second.result is third.result is Result.PASS
    assert asked == dns.total  # the second and third checks were answered from the caches


def test_spf_timeout_is_temperror_and_not_cached(dns):
    dns.set_fault("dead.example", drop=True)
    ours = checker(dns)
    assert run(ours.check("192.0.2.1", "a@temp.example", "h.example")).result is Result.TEMPERROR
    dns.clear_faults()  # dead.example is "+all": once it answers, the include passes
    assert run(ours.check("192.0.2.1", "a@temp.example", "h.example")).result is Result.PASS


def test_independent_include_targets_are_asked_at_once(dns):
    # inc.example includes inc-a then inc-b; inc-a never answers, so pyspf never reaches
    # inc-b itself: its query was sent when inc.example's record arrived
    dns.set_fault("inc-a.example", drop=True)
    result = run(checker(dns).check("192.0.2.200", "a@inc.example", "h.example"))
    assert result.result is Result.TEMPERROR
    assert dns.count("inc-b.example", "TXT") == 1


def test_each_chain_link_is_asked_before_pyspf_runs_again(dns, monkeypatch):
    # redir.example redirects to inc.example, which includes inc-a and inc-b: once a record
    # arrives, its targets' queries are on the wire before pyspf evaluates it again, so that
    # evaluation overlaps their round trip instead of delaying it
    ours = checker(dns)
    sent: list[str] = []
    send = ours.client.transport.query

    async def query(request, *args, **kwargs):
        sent.append(request.question[0].name.to_text(omit_final_dot=True).lower())
        return await send(request, *args, **kwargs)

    monkeypatch.setattr(ours.client.transport, "query", query)
    sent_before_run: list[set[str]] = []
    evaluate = spfcheck._Query.check

    def check(self, *args, **kwargs):
        sent_before_run.append(set(sent))
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(spfcheck._Query, "check", check)
    assert run(ours.check("198.51.100.3", "a@redir.example", "h.example")).result is Result.PASS
    assert sent_before_run[0] == set()
    assert sent_before_run[1] == {"redir.example", "inc.example"}
    assert {"inc-a.example", "inc-b.example"} <= sent_before_run[2]


def test_spf_servfail_is_temperror(dns):
    dns.set_fault("dead.example", servfail=True)
    assert run(checker(dns).check("192.0.2.1", "a@temp.example", "h.example")).result is Result.TEMPERROR


def test_spf_results_are_shared_by_senders_of_a_domain_unless_records_use_macros(dns):
    ours = checker(dns)

    async def go():
        a = await ours.check("192.0.2.1", "bounce-123@example.com", "h.example")
        asked = dns.total
        b = await ours.check("192.0.2.1", "bounce-456@example.com", "h.example")  # VERP: same entry
        shared = dns.total == asked
        c = await ours.check("192.0.2.1", "bob@macro.example", "h.example")    # %{l}: per sender
        d = await ours.check("192.0.2.1", "eve@macro.example", "h.example")
        return a, b, shared, c, d

    a, b, shared, c, d = run(go())
    assert a.result is b.result is Result.PASS and shared
    assert (c.result, d.result) == (Result.PASS, Result.PERMERROR)  # eve.users.example: no record


def test_an_uncacheable_answer_makes_the_result_uncacheable(dns):
    cache = MemoryCache(100)
    client = DnsClient(DnsConfig(nameservers=(dns.address,), timeout=0.5, max_negative_ttl=0), cache)
    ours = SpfChecker(client, cache, client.clock)
    run(ours.check("192.0.2.1", "a@void.example", "h.example"))  # reads NXDOMAIN answers, TTL 0 now
    asked = dns.total
    run(ours.check("192.0.2.1", "a@void.example", "h.example"))
    assert dns.total > asked


def test_spf_result_expires_with_the_dns_answers_it_used(dns):
    now = [1000.0]
    cache = MemoryCache(100)
    client = DnsClient(DnsConfig(nameservers=(dns.address,), timeout=0.5), cache, clock=lambda: now[0])
    ours = SpfChecker(client, cache, client.clock)
    run(ours.check("192.0.2.1", "a@example.com", "h.example"))  # example.com TXT has TTL 3600
    asked = dns.total
    now[0] += 3599
    run(ours.check("192.0.2.1", "a@example.com", "h.example"))
    assert dns.total == asked
    now[0] += 2
    run(ours.check("192.0.2.1", "a@example.com", "h.example"))
    assert dns.total == asked + 1


# A CNAME loop is broken data, not a failing server: the RFC 7208 test suite's results
# (pyspf over zone data), never temperror. Zone data: the cname-loop records of example.zone.
LOOP_CASES = [
    # ptr-cname-loop: the PTR name's address is a loop, so ptr does not match: "v=spf1 ptr" -> neutral
    (("192.0.2.44", "a@ptr-loop.example", "h.example"), Result.NEUTRAL),
    # the include target has no SPF record
    (("192.0.2.1", "a@inc-loop.example", "h.example"), Result.PERMERROR),
    # a: of a loop matches nothing, so "~all" decides
    (("192.0.2.1", "a@a-loop.example", "h.example"), Result.SOFTFAIL),
]


@pytest.mark.parametrize("case, expected", LOOP_CASES)
def test_spf_cname_loop_is_a_permanent_answer(dns, case, expected):
    assert run(checker(dns).check(*case)).result is expected


def test_an_spf_checker_leaves_pyspf_alone_for_other_users(dns, stock_resolver):
    ours = checker(dns)
    assert run(ours.check("192.0.2.1", "a@example.com", "h.example")).result is Result.PASS
    # pyspf used directly, on its own resolver, in the same process
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pyspf calls dns.resolver.query()
        assert spf.check2(i="198.51.100.3", s="a@inc.example", h="h.example", querytime=0)[0] == "pass"
        assert spf.check2(i="192.0.2.99", s="a@mxs.example", h="h.example", querytime=0)[0] == "fail"


class _GatedCache(MemoryCache):
    """Holds the first DNS read of a check until ``release`` is set, after setting ``entered``."""

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        super().__init__(1000)
        self.entered, self.release = entered, release
        self.armed = False
        self.held = False

    def get_entry(self, key: Hashable, now: float) -> tuple[Any, float] | None:
        if self.armed and isinstance(key, tuple) and len(key) == 2:
            self.armed = False
            self.entered.set()
            self.held = self.release.wait(30)
        return super().get_entry(key, now)


def test_concurrent_checks_each_see_their_own_session(dns):
    # two checkers, each with its own cache holding only its own DNS data, in two threads;
    # check A pauses inside pyspf until check B is inside pyspf too, then runs to the end
    # while B waits: neither may answer from the other's session
    a_entered, b_entered, a_done = threading.Event(), threading.Event(), threading.Event()
    cache_a, cache_b = _GatedCache(a_entered, b_entered), _GatedCache(b_entered, a_done)
    checks = []
    for cache in (cache_a, cache_b):
        client = DnsClient(DnsConfig(nameservers=(dns.address,), timeout=0.5), cache)
        checks.append(SpfChecker(client, cache, client.clock))
    ours_a, ours_b = checks
    # warm each cache with its own DNS data (a different client IP, so no SPF result is reused)
    assert run(ours_a.check("192.0.2.10", "a@mxs.example", "h.example")).result is Result.PASS
    assert run(ours_b.check("198.51.100.200", "a@amech.example", "h.example")).result is Result.PASS
    results: dict[str, Any] = {}

    def run_a() -> None:
        try:
            results["a"] = run(ours_a.check("192.0.2.11", "a@mxs.example", "h.example")).result
        except Exception as e:  # the failure is the assertion below
            results["a"] = e
        finally:
            a_done.set()

    def run_b() -> None:
        assert a_entered.wait(30)
        try:
            results["b"] = run(ours_b.check("192.0.2.20", "a@amech.example", "h.example")).result
        except Exception as e:
            results["b"] = e

    cache_a.armed = cache_b.armed = True
    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert cache_a.held and cache_b.held  # the two checks really were inside pyspf at once
    assert results == {"a": Result.PASS, "b": Result.PASS}


def test_spf_gives_the_same_results_as_every_method(dns):
    # one result type: what a policy compares against (policyapi.Result) is what SPF gives
    outcome = run(checker(dns).check("192.0.2.1", "a@example.com", "h.example"))
    assert outcome.result is policyapi.Result.PASS
