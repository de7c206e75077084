"""CSA (draft-ietf-marid-csv-csa-02): reading SRV records, and the check against the test DNS
server's csa.example zone (testsupport/zones/csa.example.zone)."""
from __future__ import annotations

import ipaddress
import itertools

import dns.name
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.engine.checks import csa
from checkid.engine.checks.csa import Authorization
from checkid.engine.dns.cache import MemoryCache
from checkid.engine.dns.client import DnsClient
from checkid.engine.result import Result
from tests.conftest import base_config, run

V4 = ipaddress.ip_address("192.0.2.1")
V6 = ipaddress.ip_address("2001:db8::1")

# -- reading records (pure) ------------------------------------------------------------------

records = st.tuples(st.integers(0, 4), st.integers(0, 5), st.integers(0, 3),
                    st.sampled_from(["a.example", "b.example", "."]))


@given(st.lists(records, max_size=5))
def test_read_records_does_not_depend_on_their_order(recs):
    first = csa.read_records(tuple(recs))
    for perm in itertools.islice(itertools.permutations(recs), 24):
        assert csa.read_records(perm) == first


@given(st.lists(records, max_size=4), st.lists(records, max_size=4))
def test_records_of_other_versions_are_ignored(ours, others):
    ours1 = [r for r in ours if r[0] == 1]
    foreign = [r for r in others if r[0] != 1]
    assert csa.read_records(tuple(ours1 + foreign)) == csa.read_records(tuple(ours1))


@pytest.mark.parametrize("weight, expected", [
    (1, Authorization.NOT_AUTHORIZED), (2, Authorization.AUTHORIZED), (3, Authorization.UNKNOWN),
    (0, Authorization.MALFORMED), (4, Authorization.MALFORMED), (65535, Authorization.MALFORMED),
])
def test_weight_is_the_authorization(weight, expected):
    assert csa.read_records(((1, weight, 0, "host.example"),)).authorization is expected


def test_records_that_disagree_are_malformed_and_dot_targets_carry_no_address():
    assert csa.read_records(((1, 2, 0, "a.example"), (1, 1, 0, "a.example"))).authorization is Authorization.MALFORMED
    read = csa.read_records(((1, 2, 0, "."), (1, 2, 0, "B.Example.")))
    assert (read.authorization, read.targets) == (Authorization.AUTHORIZED, ("b.example",))
    assert csa.read_records(((1, 1, 1, "x.example"),)).explicit_subdomains
    assert not csa.read_records(((1, 1, 2, "x.example"),)).explicit_subdomains
    assert csa.read_records(()).authorization is Authorization.NONE


hostnames = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), min_size=1, max_size=9).map(".".join)


@given(hostnames)
def test_parents_are_the_domains_above_the_name_from_the_second_level_down(name):
    # the expectation from dnspython's own name arithmetic, not from the code under test
    above, n = [], dns.name.from_text(name)
    while len(n.labels) > 3:  # a parent keeps at least two labels and the root
        n = n.parent()
        above.append(n.to_text(omit_final_dot=True))
    expected = tuple(reversed(above))[: csa.MAX_PARENTS]
    assert csa.parents(name) == expected


# -- the check against the test DNS server ----------------------------------------------------

def check(dns_server, helo, ip=V4):
    async def go():
        client = DnsClient(base_config(dns_server).dns, MemoryCache(1000))
        return await csa.check(client, helo, ip)
    return run(go())


@pytest.mark.parametrize("helo, ip, result", [
    ("good.csa.example", V4, Result.PASS),
    ("good.csa.example", V6, Result.PASS),
    ("pair.csa.example", V4, Result.PASS),
    ("elsewhere.csa.example", V4, Result.FAIL),
    ("nowhere.csa.example", V4, Result.FAIL),
    ("denied.csa.example", V4, Result.FAIL),
    ("unknown.csa.example", V4, Result.NEUTRAL),
    ("badweight.csa.example", V4, Result.PERMERROR),
    ("mixed.csa.example", V4, Result.PERMERROR),
    ("v2.csa.example", V4, Result.NONE),
    ("loose.csa.example", V4, Result.FAIL),  # authorized, but 192.0.2.1 is not its address
    ("host.loose.csa.example", V4, Result.NONE),
    ("host.strict.csa.example", V4, Result.FAIL),
    ("nothing.csa.example", V4, Result.NONE),
])
def test_csa_results(dns, helo, ip, result):
    outcome = check(dns, helo, ip)
    assert outcome.result is result, outcome


def test_an_ipv6_client_is_checked_against_aaaa_only(dns):
    # pair's targets have A records only: an IPv6 client is not among them
    assert check(dns, "pair.csa.example", V6).result is Result.FAIL
    assert dns.count("two.csa.example", "AAAA") == 1 and dns.count("two.csa.example", "A") == 0


def test_explicit_authorization_names_the_parent_that_asks_for_it(dns):
    outcome = check(dns, "host.strict.csa.example")
    assert outcome.source == "strict.csa.example" and "requires" in outcome.reason


def test_without_a_record_the_parents_are_asked_once_each_and_the_tld_never(dns):
    assert check(dns, "a.b.c.csa.example").result is Result.NONE
    for name in ("a.b.c.csa.example", "csa.example", "c.csa.example", "b.c.csa.example"):
        assert dns.count(f"_client._smtp.{name}", "SRV") == 1
    assert dns.count("_client._smtp.example", "SRV") == 0


def test_a_record_of_its_own_asks_no_parent(dns):
    check(dns, "good.csa.example")
    assert dns.count("_client._smtp.csa.example") == 0


@pytest.mark.parametrize("fault", [{"drop": True}, {"servfail": True}])
def test_dns_failures_are_temporary_errors(dns, fault):
    dns.set_fault("_client._smtp.good.csa.example", **fault)
    assert check(dns, "good.csa.example").result is Result.TEMPERROR
    dns.clear_faults()
    dns.set_fault("slowhost.csa.example", **fault)
    assert check(dns, "slowtarget.csa.example").result is Result.TEMPERROR
    dns.clear_faults()
    dns.set_fault("_client._smtp.strict.csa.example", **fault)
    assert check(dns, "host.strict.csa.example").result is Result.TEMPERROR
