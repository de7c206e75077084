"""The context's stages through whole decisions (default policy): the CSV method (CSA), the
identity chosen by registry record, and Authentication-Results."""
from __future__ import annotations

import authres
import pytest

from checkid.config import HeadersConfig, IdentityConfig
from checkid.engine.decision import Action, Envelope
from checkid.engine.trace import Trace
from tests.conftest import run

IP = "192.0.2.1"
CSA_RATINGS = "ratings=S1:A,M2:A,H1:B"


def decide(engine, ip=IP, ident=None, helo=None, sender=None, trace=None):
    return run(engine.decide(Envelope(ip, ident, helo, sender), trace))


def authent(decision):
    assert decision.headers and decision.headers[0].label == "Authent:"
    return decision.headers[0].text


# -- CSV (CSA) ----------------------------------------------------------------------------

def test_csa_authorized_client_is_accepted(make_engine):
    d = decide(make_engine(), IP, "csa.example", helo="good.csa.example")
    assert d.action is Action.ACCEPT
    assert authent(d) == f"192.0.2.1 csa.example CSV PASS {CSA_RATINGS}"
    assert d.results == (("CSV", "PASS"),)


def test_csa_for_an_ipv6_client(make_engine):
    d = decide(make_engine(), "2001:db8::1", "csa.example", helo="good.csa.example")
    assert authent(d).startswith("2001:db8::1 csa.example CSV PASS")


@pytest.mark.parametrize("helo, action, result", [
    ("denied.csa.example", Action.REJECT, "FAIL"),          # authoritative record: a FAIL rejects
    ("elsewhere.csa.example", Action.REJECT, "FAIL"),
    ("host.strict.csa.example", Action.REJECT, "FAIL"),
    ("unknown.csa.example", Action.FILTER, "NEUTRAL"),
    ("badweight.csa.example", Action.FILTER, "PERMERROR"),
    ("nothing.csa.example", Action.FILTER, "NONE"),
])
def test_csa_results_lead_to_decisions(make_engine, helo, action, result):
    d = decide(make_engine(), IP, "csa.example", helo=helo)
    assert d.action is action and d.results == (("CSV", result),)


def test_csa_temporary_error_tempfails(make_engine, dns):
    dns.set_fault("_client._smtp.good.csa.example", servfail=True)
    d = decide(make_engine(), IP, "csa.example", helo="good.csa.example")
    assert (d.action, d.stage, d.results) == (Action.TEMPFAIL, "methods", (("CSV", "TEMPERROR"),))


def test_csa_vouches_only_for_a_helo_name_at_or_under_the_identity(make_engine, dns):
    trace = Trace()
    d = decide(make_engine(), IP, "csa.example", helo="good.csa.example.net", trace=trace)
    assert d.action is Action.FILTER and d.results == (("CSV", "NONE"),)
    assert dns.count("_client._smtp.good.csa.example.net") == 0
    assert any("neither csa.example nor under it" in m for _, m in trace.lines)


def test_csa_with_an_address_literal_helo_is_none(make_engine, dns):
    d = decide(make_engine(), IP, "csa.example", helo="[192.0.2.1]")
    assert d.results == (("CSV", "NONE"),)
    assert not [name for name, rdtype in dns.queries if rdtype == "SRV"]


# -- identity by registry record ------------------------------------------------------------

def test_identity_is_the_first_fallback_with_a_record(make_engine, dns):
    trace = Trace()
    d = decide(make_engine(), IP, None, helo="mail.example.com", sender="a@example.com", trace=trace)
    assert d.action is Action.ACCEPT
    assert authent(d) == "192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"
    assert dns.count("mail.example.com.registry.test", "TXT") == 1
    assert dns.count("example.com.registry.test", "TXT") == 1
    assert ("identity", "example.com (from mail_from); no record for mail.example.com (helo)") in trace.lines
    assert (d.identity, d.identity_source) == ("example.com", "mail_from")


def test_the_candidates_registry_lookups_go_out_together(make_engine, dns):
    # the HELO name's lookup never answers; had the lookups gone one after the other, the
    # MAIL FROM domain would not have been asked before the HELO name's timed out, and a
    # timeout is not skipped (it tempfails), so nothing would ask it afterwards either
    dns.set_fault("mail.example.com.registry.test", drop=True)
    d = decide(make_engine(), IP, None, helo="mail.example.com", sender="a@example.com")
    assert (d.action, d.stage) == (Action.TEMPFAIL, "registry")
    assert dns.count("example.com.registry.test", "TXT") == 1


def test_delayed_candidates_still_decide(make_engine, dns):
    dns.set_fault("mail.example.com.registry.test", delay=0.1)
    dns.set_fault("example.com.registry.test", delay=0.1)
    d = decide(make_engine(), IP, None, helo="mail.example.com", sender="a@example.com")
    assert authent(d).startswith("192.0.2.1 example.com SPF1 PASS")


def test_a_parse_error_is_chosen_like_a_record(make_engine):
    d = decide(make_engine(), IP, None, helo="broken.example", sender="a@example.com")
    assert authent(d).startswith("192.0.2.1 broken.example REGISTRY PERMERROR")


def test_no_source_with_a_record_keeps_the_first_valid_one(make_engine, dns):
    trace = Trace()
    d = decide(make_engine(), IP, None, helo="mx.unregistered.example", sender="a@other.unregistered.example",
               trace=trace)
    assert d.action is Action.FILTER and authent(d) == "192.0.2.1 mx.unregistered.example NONE NONE ratings="
    assert dns.count("other.unregistered.example.registry.test") == 1
    assert any(stage == "identity" and "no source has a record" in m for stage, m in trace.lines)


def test_first_valid_keeps_the_first_source(make_engine, dns):
    engine = make_engine(identity=IdentityConfig(select="first_valid"))
    d = decide(engine, IP, None, helo="mail.example.com", sender="a@example.com")
    assert d.action is Action.FILTER and authent(d).startswith("192.0.2.1 mail.example.com NONE NONE")
    assert dns.count("example.com.registry.test") == 0


def test_one_domain_in_both_sources_is_looked_up_once(make_engine, dns):
    decide(make_engine(), IP, None, helo="example.com", sender="a@example.com")
    assert dns.count("example.com.registry.test") == 1


def test_a_declared_id_is_the_identity_whatever_the_fallbacks(make_engine, dns):
    d = decide(make_engine(), IP, "unregistered.example", helo="example.com", sender="a@example.com")
    assert authent(d).startswith("192.0.2.1 unregistered.example NONE NONE")
    assert dns.count("example.com.registry.test") == 0


def test_the_prescreen_runs_before_any_registry_lookup(make_engine, dns):
    d = decide(make_engine(), "203.0.113.10", None, helo="mail.example.com", sender="a@example.com")
    assert d.stage == "prescreen"
    assert dns.count("mail.example.com.registry.test") == dns.count("example.com.registry.test") == 0


# -- Authentication-Results ---------------------------------------------------------------

def with_ar(make_engine):
    return make_engine(headers=HeadersConfig(authentication_results=True, authserv_id="mx.example.org"))


def parsed(decision):
    header = next(h for h in decision.headers if h.label == "Authentication-Results:")
    assert header.text.isprintable()
    return authres.parse(f"Authentication-Results: {header.text}")


def clauses(ar):
    return [(r.method, r.result, {f"{p.type}.{p.name}": p.value for p in r.properties}) for r in ar.results]


def test_authentication_results_name_spf_and_the_mail_from_domain(make_engine):
    ar = parsed(decide(with_ar(make_engine), IP, "example.com", helo="out.example.com", sender="bob@example.com"))
    assert ar.authserv_id == "mx.example.org"
    assert clauses(ar) == [("spf", "pass", {"smtp.mailfrom": "example.com"})]


def test_authentication_results_list_every_method_that_ran(make_engine):
    # qr.example: the address check fails for 192.0.2.1, then SPF passes
    d = decide(with_ar(make_engine), IP, "qr.example", helo="mta.qr.example")
    assert d.action is Action.ACCEPT
    assert clauses(parsed(d)) == [("x-checkid-qr1", "fail", {"smtp.helo": "mta.qr.example"}),
                                  ("spf", "pass", {"smtp.mailfrom": "qr.example"})]


def test_authentication_results_for_csa_use_the_marked_extension_method(make_engine):
    d = decide(with_ar(make_engine), IP, "csa.example", helo="good.csa.example")
    assert clauses(parsed(d)) == [("x-checkid-csa", "pass", {"smtp.helo": "good.csa.example"})]
    d = decide(with_ar(make_engine), IP, "csa.example", helo="unknown.csa.example")
    (clause,) = parsed(d).results
    assert (clause.method, clause.result, clause.reason) == ("x-checkid-csa", "neutral",
                                                             "authorized, address not checkable")


def test_authentication_results_without_methods_say_none(make_engine):
    d = decide(with_ar(make_engine), IP, "unregistered.example")
    ar = parsed(d)
    assert ar.authserv_id == "mx.example.org" and ar.results == []
