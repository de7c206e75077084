"""The registry record grammar, by example and by property."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.engine.checks import registry
from checkid.engine.dns.client import DnsAnswer, Outcome
from checkid.engine.checks.registry import MethodOffer, Rating, RegistryError, RegistryOutcome


def test_parse_short_spellings():
    rec = registry.parse("mth=SPF+5,DKIM+3 svc=S1:A,H2:b ip4=192.0.2.216-8 opt=df:3")
    assert rec.methods == (MethodOffer("SPF1", 5), MethodOffer("DKIM", 3))
    assert rec.ratings == (Rating("S1", "A"), Rating("H2", "B"))
    assert rec.ratings_text == "S1:A,H2:B"
    assert rec.status == 3 and not rec.stop
    assert [ipaddress.ip_address(f"192.0.2.{n}") in rec.addresses for n in (215, 216, 217, 218, 219)] == \
        [False, True, True, True, False]


def test_parse_long_spellings_keys_case_insensitive_unknown_ignored():
    rec = registry.parse("METHODS=spf1 Ratings=M2:12,VX:example.org:A future=whatever IP6=2001:db8::/32")
    assert rec.methods == (MethodOffer("SPF1", None),)
    assert rec.ratings == (Rating("M2", "12"), Rating("VX:EXAMPLE.ORG", "A"))
    assert ipaddress.ip_address("2001:db8::5") in rec.addresses
    assert rec.status == 9


def test_parse_stop_all_and_idlevel():
    rec = registry.parse("opt=stop:all,IDlevel:3")
    assert rec.stop and rec.methods == () and rec.ratings == ()


@pytest.mark.parametrize("text, message", [
    ("", "no registry keys"),
    ("future=1", "no registry keys"),
    ("svc=S1-A", "bad rating"),
    ("svc=S1:AB", "bad rating"),
    ("svc=S1:1000", "bad rating"),
    ("svc=S1:A,,M2:B", "empty item"),
    ("mth=SPF+", "bad method"),
    ("mth=SPF+1234", "bad method"),
    ("ip4=192.0.2.300", "bad address"),
    ("ip4=192.0.2.216-5", "bad address"),
    ("ip4=192.0.2.216-300", "bad address"),
    ("ip6=2001:db8::g", "bad address"),
    ("opt=df:9", "status must be 1..8"),
    ("svc=S1:A garbage", "not key=value"),
    ("mth=" + "SPF," * 2000, "longer than"),
])
def test_parse_errors_say_what_is_wrong(text, message):
    with pytest.raises(RegistryError, match=message):
        registry.parse(text)


def test_interpret_outcomes_are_distinct():
    txt = lambda *records: DnsAnswer(Outcome.ANSWER, tuple(tuple(c.encode() for c in r) for r in records), 60)
    assert registry.interpret(txt(("svc=S1:A",))).outcome is RegistryOutcome.RECORD
    assert registry.interpret(txt(("svc=S1:A",), ("mth=SPF1 &",))).record.methods == (MethodOffer("SPF1", None),)
    assert registry.interpret(txt(("svc=", "S1:A"))).record.ratings == (Rating("S1", "A"),)
    assert registry.interpret(txt(("svc=bad",))).outcome is RegistryOutcome.PARSE_ERROR
    assert registry.interpret(DnsAnswer(Outcome.NXDOMAIN, (), 60)).outcome is RegistryOutcome.NO_RECORD
    assert registry.interpret(DnsAnswer(Outcome.NODATA, (), 60)).outcome is RegistryOutcome.NO_RECORD
    assert registry.interpret(DnsAnswer(Outcome.TIMEOUT)).outcome is RegistryOutcome.TEMPERROR
    assert registry.interpret(DnsAnswer(Outcome.SERVFAIL)).outcome is RegistryOutcome.TEMPERROR


# -- properties ---------------------------------------------------------------------------

services = st.from_regex(r"[A-Z][A-Z0-9]{0,3}", fullmatch=True)
grades = st.one_of(st.from_regex(r"[A-Z]", fullmatch=True), st.integers(0, 999).map(str))
methods = st.sampled_from(["SPF1", "DKIM", "CSV", "SID"])
v4nets = st.builds(lambda a, p: ipaddress.IPv4Network((a, p), strict=False), st.integers(0, 2**32 - 1),
                   st.integers(8, 32))


@given(
    st.lists(st.tuples(services, grades), min_size=1, max_size=6),
    st.lists(st.tuples(methods, st.one_of(st.none(), st.integers(0, 999))), max_size=4),
    st.lists(v4nets, max_size=4),
    st.one_of(st.none(), st.integers(1, 8)),
    st.booleans(),
    st.data(),
)
def test_record_round_trips(ratings, mths, nets, df, long_keys, data):
    blocks = [("ratings=" if long_keys else "svc=") + ",".join(f"{s}:{g}" for s, g in ratings)]
    if mths:
        blocks.append(("methods=" if long_keys else "mth=")
                      + ",".join(m + (f"+{n}" if n is not None else "") for m, n in mths))
    if nets:
        blocks.append("ip4=" + ",".join(str(n) for n in nets))
    if df is not None:
        blocks.append(f"opt=df:{df}")
    blocks = data.draw(st.permutations(blocks))
    rec = registry.parse(data.draw(st.sampled_from([" ", "  ", "\t"])).join(blocks))
    assert rec.ratings == tuple(Rating(s, g) for s, g in ratings)
    assert rec.methods == tuple(MethodOffer(m, n) for m, n in mths)
    assert rec.status == (df or 9)
    for net in nets:
        assert net.network_address in rec.addresses and net.broadcast_address in rec.addresses


@given(st.text(max_size=300))
def test_parse_never_fails_other_than_with_registry_error(text):
    try:
        registry.parse(text)
    except RegistryError:
        pass


@given(st.lists(st.binary(max_size=255), max_size=4))
def test_interpret_accepts_any_txt_bytes(chunks):
    result = registry.interpret(DnsAnswer(Outcome.ANSWER, (tuple(chunks),), 60))
    assert result.outcome in (RegistryOutcome.RECORD, RegistryOutcome.PARSE_ERROR)
