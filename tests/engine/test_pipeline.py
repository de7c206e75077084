"""Decisions of the whole pipeline (default policy) against the test DNS data."""
from __future__ import annotations

import pytest

from checkid.config import (BlacklistConfig, DnsConfig, DnsList, HeadersConfig, IdentityConfig,
                                   PolicyConfig, PrescreenConfig, RatingService, ReputationConfig)
from checkid.engine.decision import Action, Envelope
from tests.conftest import run

IP = "192.0.2.1"


def decide(engine, ip=IP, ident=None, helo=None, sender=None, rcpts=()):
    return run(engine.decide(Envelope(ip, ident, helo, sender, tuple(rcpts))))


def authent(decision):
    assert decision.headers and decision.headers[0].label == "Authent:"
    return decision.headers[0].text


# -- pre-screen ---------------------------------------------------------------------------

def test_prescreen_dnsbl_hit_rejects_naming_the_list_before_any_registry_query(make_engine, dns):
    d = decide(make_engine(), "203.0.113.10", "example.com")
    assert (d.action, d.code, d.xcode) == (Action.REJECT, 550, "5.7.1")
    assert d.text == "Client host [203.0.113.10] blocked using Spamhaus ZEN (SBL)"
    assert d.headers == ()
    assert dns.count("example.com.registry.test") == 0


def test_prescreen_dnsbl_error_code_is_not_a_listing_and_is_counted(make_engine, dns):
    engine = make_engine()
    d = decide(engine, "203.0.113.254", "example.com")
    assert d.stage == "methods"  # went on to the registry and SPF
    assert dns.count("example.com.registry.test") == 1
    assert engine.counts[("dnsbl_error_answers", "zen.spamhaus.org")] == 1


def test_prescreen_unmapped_code_is_not_a_listing(make_engine):
    engine = make_engine()
    assert decide(engine, "203.0.113.99", "example.com").stage != "prescreen"
    assert engine.counts[("dnsbl_unknown_answers", "zen.spamhaus.org")] == 1


def test_prescreen_without_code_map_lists_any_127_0_0_answer(make_engine):
    engine = make_engine(prescreen=PrescreenConfig(dnsbl=(DnsList("zen.spamhaus.org"),)))
    d = decide(engine, "203.0.113.99", "example.com")
    assert d.action is Action.REJECT and d.text.endswith("blocked using zen.spamhaus.org (127.0.0.99)")


def test_prescreen_ipv6_is_queried_in_nibble_form(make_engine, dns):
    d = decide(make_engine(), "2001:db8::bad", "example.com")
    assert d.action is Action.REJECT and "(SBL-CSS)" in d.text
    assert dns.count("d.a.b.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.spamhaus.org", "A") == 1


def test_prescreen_dnsbl_timeout_does_not_list(make_engine, dns):
    dns.set_fault("10.113.0.203.zen.spamhaus.org", drop=True)
    engine = make_engine()
    d = decide(engine, "203.0.113.10", "example.com")
    assert d.stage != "prescreen"
    assert engine.counts[("dnsbl_lookup_errors", "zen.spamhaus.org")] == 1


def test_prescreen_allow_list_accepts_without_dns(make_engine, dns):
    engine = make_engine(prescreen=PrescreenConfig(allow=("192.0.2.0/28",)))
    d = decide(engine, "192.0.2.5", "example.net")
    assert d.action is Action.ACCEPT and authent(d) == "192.0.2.5 example.net ALLOW PASS ratings="
    assert dns.total == 0


def test_prescreen_block_files_reject_with_list_name(make_engine, tmp_path, dns):
    cidr = tmp_path / "drop.txt"
    cidr.write_text("# local drop list\n198.51.100.0/24\n")
    rbl = tmp_path / "local.rbl"
    rbl.write_text(":127.0.0.2:Listed locally, see http://bl.example/$\n203.0.113.64/26\n!203.0.113.70\n")
    engine = make_engine(prescreen=PrescreenConfig(block_files=(str(cidr), f"ip4set:{rbl}")))
    d = decide(engine, "198.51.100.9", "example.com")
    assert d.action is Action.REJECT and d.text == "Client host [198.51.100.9] blocked using drop.txt"
    d = decide(engine, "203.0.113.65", "example.com")
    assert d.text == ("Client host [203.0.113.65] blocked using local.rbl "
                      "(Listed locally, see http://bl.example/203.0.113.65)")
    assert decide(engine, "203.0.113.70", "example.com").stage != "prescreen"
    assert dns.count("65.113.0.203.zen.spamhaus.org") == 0


# -- registry and methods ---------------------------------------------------------------

def test_registry_long_spellings_and_split_strings(make_engine):
    d = decide(make_engine(), IP, "long.example")
    assert d.action is Action.ACCEPT and authent(d) == "192.0.2.1 long.example SPF1 PASS ratings=S1:B,M2:A"


@pytest.mark.parametrize("ip", ["192.0.2.216", "192.0.2.218", "198.51.100.77", "2001:db8:1::25"])
def test_helo_address_check_passes_inside_ip4_ip6(make_engine, ip, dns):
    engine = make_engine()
    d = decide(engine, ip, "helo.example")
    assert d.action is Action.ACCEPT and authent(d).startswith(f"{ip} helo.example QR1 PASS")
    assert spf_checks(engine) == 0  # QR1 passed first: SPF never ran
    assert dns.count("helo.example", "TXT") == 1  # only the prefetch alongside the registry miss


def test_helo_address_check_fail_then_spf_fail_rejects(make_engine):
    d = decide(make_engine(), "192.0.2.219", "helo.example")
    assert d.action is Action.REJECT and d.results == (("QR1", "FAIL"),)


def test_a_failed_default_record_filters_instead_of_rejecting(make_engine):
    d = decide(make_engine(), IP, "default.example")
    assert d.action is Action.FILTER and authent(d) == "192.0.2.1 default.example SPF1 FAIL ratings="


def test_stop_all_rejects_every_server(make_engine):
    d = decide(make_engine(), IP, "nomail.example")
    assert d.action is Action.REJECT and d.text == "Sending MTA '192.0.2.1' not authorized by 'nomail.example'"


def test_method_over_the_site_budget_is_skipped(make_engine, dns):
    engine = make_engine()
    d = decide(engine, IP, "costly.example")
    assert d.action is Action.FILTER and authent(d).startswith("192.0.2.1 costly.example NONE NONE")
    assert spf_checks(engine) == 0 and dns.count("costly.example", "TXT") == 1  # the prefetch only


def test_a_registry_miss_asks_the_identitys_spf_record_in_the_same_round_trip(make_engine, dns):
    # the registry never answers, so the decision ends at the registry; the SPF record was
    # nevertheless asked: alongside the registry query, not after it
    dns.set_fault("example.com.registry.test", drop=True)
    engine = make_engine()
    d = decide(engine, IP, "example.com")
    assert d.action is Action.TEMPFAIL and d.stage == "registry"
    assert dns.count("example.com", "TXT") == 1 and spf_checks(engine) == 0
    assert engine.counts[("dns_prefetches", "TXT")] == 1


def spf_checks(engine):
    return sum(n for key, n in engine.counts.items() if key[0] == "spf_results")


def test_no_registry_record_filters(make_engine):
    d = decide(make_engine(), IP, "unregistered.example")
    assert d.action is Action.FILTER and authent(d) == "192.0.2.1 unregistered.example NONE NONE ratings="


def test_registry_parse_error_is_its_own_outcome(make_engine):
    engine = make_engine()
    d = decide(engine, IP, "broken.example")
    assert d.action is Action.FILTER and authent(d).startswith("192.0.2.1 broken.example REGISTRY PERMERROR")
    assert engine.counts[("registry_lookups", "parse_error")] == 1
    assert engine.counts[("registry_lookups", "no_record")] == 0


def test_registry_timeout_tempfails_by_default(make_engine, dns):
    dns.set_fault("slow.example.registry.test", drop=True)
    engine = make_engine()
    d = decide(engine, IP, "slow.example")
    assert (d.action, d.code, d.xcode) == (Action.TEMPFAIL, 451, "4.4.3")
    assert engine.counts[("registry_lookups", "temperror")] == 1


def test_registry_timeout_fails_open_when_configured(make_engine, dns):
    dns.set_fault("slow.example.registry.test", drop=True)
    d = decide(make_engine(policy=PolicyConfig(on_temperror="filter")), IP, "slow.example")
    assert d.action is Action.FILTER and authent(d).startswith("192.0.2.1 slow.example DNS TEMPERROR")


def test_registry_servfail_is_a_temporary_error_and_not_cached(make_engine, dns):
    dns.set_fault("slow.example.registry.test", servfail=True)
    engine = make_engine()
    assert decide(engine, IP, "slow.example").action is Action.TEMPFAIL
    dns.clear_faults()
    assert decide(engine, IP, "slow.example").action is Action.ACCEPT


def test_spf_temperror_tempfails(make_engine, dns):
    dns.set_fault("dead.example", drop=True)
    d = decide(make_engine(), IP, "temp.example")
    assert d.action is Action.TEMPFAIL and d.results == (("SPF1", "TEMPERROR"),)


def test_spf_softfail_filters(make_engine):
    d = decide(make_engine(), IP, "soft.example")
    assert d.action is Action.FILTER and authent(d).startswith("192.0.2.1 soft.example SPF1 SOFTFAIL")


def test_decision_deadline_gives_temperror(make_engine, dns):
    dns.set_fault("example.com.registry.test", delay=1.0)
    engine = make_engine(dns=DnsConfig(nameservers=(dns.address,), timeout=0.9, decision_timeout=0.2))
    d = decide(engine, IP, "example.com")
    assert d.action is Action.TEMPFAIL and d.stage == "deadline"


# -- identity ---------------------------------------------------------------------------

def test_identity_falls_back_to_helo_then_mail_from(make_engine, dns):
    engine = make_engine()
    assert authent(decide(engine, IP, None, helo="example.com")).startswith("192.0.2.1 example.com SPF1 PASS")
    d = decide(engine, IP, None, helo="[192.0.2.1]", sender="<bob@example.com>")
    assert authent(d).startswith("192.0.2.1 example.com SPF1 PASS")


def test_identity_fallback_is_configurable(make_engine, dns):
    engine = make_engine(identity=IdentityConfig(fallback=()))
    d = decide(engine, IP, None, helo="example.com", sender="bob@example.com")
    assert d.action is Action.FILTER and authent(d) == "192.0.2.1 - NONE NONE ratings="
    assert dns.count("example.com.registry.test") == 0


def test_spf_uses_the_mail_from_when_its_domain_is_the_id(make_engine, dns):
    d = decide(make_engine(), IP, "example.com", helo="mx.example.com", sender="alice@example.com")
    assert d.action is Action.ACCEPT


# -- reputation ---------------------------------------------------------------------------

def test_unknown_services_and_grades_are_ignored_so_no_ratings_filters(make_engine):
    d = decide(make_engine(), IP, "unrated.example")
    assert (d.action, d.reason) == (Action.FILTER, "no_ratings")
    assert authent(d) == "192.0.2.1 unrated.example SPF1 PASS ratings=Z9:A,S1:Q"


def test_low_average_filters(make_engine):
    assert decide(make_engine(), IP, "poor.example").action is Action.FILTER


def test_per_recipient_thresholds_override_defaults(make_engine, tmp_path):
    table = tmp_path / "thresholds"
    table.write_text("# strict users\nstrict@example.org reject_max=0\n@picky.example accept_avg=9\n")
    engine = make_engine(reputation=ReputationConfig(recipient_thresholds=str(table)))
    d = decide(engine, IP, "poor.example", rcpts=["strict@example.org"])
    assert (d.action, d.text) == (Action.REJECT, "Sender 'poor.example' has a poor reputation")
    assert decide(engine, IP, "poor.example", rcpts=["other@example.org"]).action is Action.FILTER
    assert decide(engine, IP, "example.com", rcpts=["x@picky.example"]).action is Action.FILTER
    assert decide(engine, IP, "example.com", rcpts=["x@example.org"]).action is Action.ACCEPT


def test_dns_rating_services_add_ratings(make_engine, dns):
    services = (RatingService("R1", "ratings.bl.test", "ip", {"127.0.1.1": "A"}),
                RatingService("R2", "idratings.bl.test", "id", {"127.0.1.3": "C"}))
    d = decide(make_engine(reputation=ReputationConfig(dns=services)), IP, "example.com")
    assert authent(d) == "192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B,R1:A,R2:C"
    assert dns.count("1.2.0.192.ratings.bl.test", "A") == 1


# -- blacklist block ----------------------------------------------------------------------

@pytest.mark.parametrize("action, expected", [("filter", Action.FILTER), ("reject", Action.REJECT)])
def test_blacklist_applies_only_to_unauthenticated_mail(make_engine, action, expected, dns):
    engine = make_engine(blacklist=BlacklistConfig(dnsbl=(DnsList("bl.test"),), action=action))
    d = decide(engine, "203.0.113.50", "unregistered.example")
    assert d.action is expected and d.stage == "blacklist"
    if expected is Action.REJECT:
        assert d.text == "Client host [203.0.113.50] listed by bl.test"
    dns.reset_counts()
    decide(engine, "192.0.2.217", "helo.example")  # authenticates: the list is not asked
    assert dns.count("217.2.0.192.bl.test") == 0


# -- headers ------------------------------------------------------------------------------

def test_optional_standard_headers_follow_authent(make_engine):
    engine = make_engine(headers=HeadersConfig(authentication_results=True, received_spf=True,
                                               authserv_id="mx.example.org"))
    d = decide(engine, IP, "example.com", helo="out.example.com", sender="bob@example.com")
    assert [h.label for h in d.headers] == ["Authent:", "Authentication-Results:", "Received-SPF:"]
    assert d.headers[1].text == "mx.example.org; spf=pass smtp.mailfrom=example.com"
    assert d.headers[2].text.startswith("Pass (mx.example.org: domain of example.com designates 192.0.2.1")


# -- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("env, action, code", [
    (Envelope("not-an-ip", "example.com"), Action.REJECT, 550),
    (Envelope(None, "example.com"), Action.REJECT, 550),
    (Envelope("999.1.1.1", "example.com"), Action.REJECT, 550),
    (Envelope(IP, "bad..example"), Action.REJECT, 501),
    (Envelope(IP, "-x.example"), Action.REJECT, 501),
    (Envelope(IP, "a" * 300 + ".example"), Action.REJECT, 501),
    (Envelope(IP, "example.com", sender="a" * 300 + "@example.com"), Action.REJECT, 501),
    (Envelope(IP, "example.com", helo="h" * 2000), Action.REJECT, 501),
    (Envelope(IP, "example.com", rcpts=("x@example.org",) * 5000), Action.REJECT, 552),
    (Envelope(IP, "exa\r\nmple.com"), Action.REJECT, 501),
])
def test_bad_input_is_a_decision_not_an_exception(make_engine, env, action, code, dns):
    engine = make_engine()
    d = run(engine.decide(env))
    assert (d.action, d.code) == (action, code)
    assert "\n" not in d.text and "\r" not in d.text
    assert engine.counts[("bad_input",)] == 1
    assert dns.total == 0


def test_ipv4_mapped_ipv6_is_treated_as_ipv4(make_engine):
    d = decide(make_engine(), "::ffff:192.0.2.1", "example.com")
    assert authent(d).startswith("192.0.2.1 example.com SPF1 PASS")


def test_a_policy_that_raises_gives_4xx(make_engine, tmp_path):
    broken = tmp_path / "p.py"
    broken.write_text("async def decide(ctx):\n    raise RuntimeError('boom')\n")
    engine = make_engine(policy=PolicyConfig(path=str(broken)))
    d = decide(engine, IP, "example.com")
    assert (d.action, d.code, d.xcode) == (Action.TEMPFAIL, 451, "4.3.5")
    assert engine.counts[("policy_errors",)] == 1


def test_an_empty_id_is_no_id(make_engine):
    d = decide(make_engine(), IP, "", helo="example.com")
    assert authent(d).startswith("192.0.2.1 example.com SPF1 PASS")


def test_headers_name_the_identity_spf_checked_and_stay_on_one_line(make_engine):
    engine = make_engine(headers=HeadersConfig(authentication_results=True, received_spf=True,
                                               authserv_id="mx.example.org"))
    d = decide(engine, IP, "example.com", helo="out\r\nX-Evil: 1", sender="ceo@paypal.example")
    assert d.headers[1].text == "mx.example.org; spf=pass smtp.mailfrom=example.com"
    assert all(h.text.isprintable() for h in d.headers)
    assert 'envelope-from="postmaster@example.com"' in d.headers[2].text