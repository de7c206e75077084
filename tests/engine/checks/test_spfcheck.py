"""SPF through the engine's cached DNS must give what pyspf gives over plain DNS."""
from __future__ import annotations

import warnings

import dns.nameserver as dns_nameserver
import dns.resolver as dns_resolver
import pytest
import spf

from checkid.engine.dns.cache import MemoryCache
from checkid.config import DnsConfig
from checkid.engine.dns.client import DnsClient
from checkid.engine.checks.spfcheck import SpfChecker, SpfResult, install_hook
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
def plain_pyspf(dns):
    """pyspf with its own stock dnspython hook, pointed at the test server."""
    stock = dns_resolver.Resolver(configure=False)
    host, port = dns.address.split(":")
    stock.nameservers = [dns_nameserver.Do53Nameserver(host, int(port))]
    saved_default, saved_hook = dns_resolver.default_resolver, spf.DNSLookup
    dns_resolver.default_resolver = stock
    spf.DNSLookup = spf.DNSLookup_dnspython

    def check(ip, sender, helo):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pyspf calls dns.resolver.query()
            return spf.query(i=ip, s=sender, h=helo, receiver="unknown").check()[0]

    yield check
    dns_resolver.default_resolver, spf.DNSLookup = saved_default, saved_hook
    install_hook()


def checker(server, budget_ttl=86_400):
    cache = MemoryCache(1000)
    client = DnsClient(DnsConfig(nameservers=(server.address,), timeout=0.5), cache)
    return SpfChecker(client, cache, client.clock, max_ttl=budget_ttl)


def test_spf_results_equal_pyspf_over_plain_dns(dns, plain_pyspf):
    expected = [plain_pyspf(*case) for case in CASES]
    install_hook()
    ours = checker(dns)

    async def all_cases():
        return [(await ours.check(*case)).result.value for case in CASES]

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
    assert first.result is second.result is third.result is SpfResult.PASS
    assert asked == dns.total  # the second and third checks were answered from the caches


def test_spf_timeout_is_temperror_and_not_cached(dns):
    dns.set_fault("dead.example", drop=True)
    ours = checker(dns)
    assert run(ours.check("192.0.2.1", "a@temp.example", "h.example")).result is SpfResult.TEMPERROR
    dns.clear_faults()  # dead.example is "+all": once it answers, the include passes
    assert run(ours.check("192.0.2.1", "a@temp.example", "h.example")).result is SpfResult.PASS


def test_independent_include_targets_are_asked_at_once(dns):
    # inc.example includes inc-a then inc-b; inc-a never answers, so pyspf never reaches
    # inc-b itself: its query was sent when inc.example's record arrived
    dns.set_fault("inc-a.example", drop=True)
    result = run(checker(dns).check("192.0.2.200", "a@inc.example", "h.example"))
    assert result.result is SpfResult.TEMPERROR
    assert dns.count("inc-b.example", "TXT") == 1


def test_spf_servfail_is_temperror(dns):
    dns.set_fault("dead.example", servfail=True)
    assert run(checker(dns).check("192.0.2.1", "a@temp.example", "h.example")).result is SpfResult.TEMPERROR


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
    assert a.result is b.result is SpfResult.PASS and shared
    assert (c.result, d.result) == (SpfResult.PASS, SpfResult.PERMERROR)  # eve.users.example: no record


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
