"""DKIM through whole decisions (default policy): CONTINUE at MAIL time, the final decision
at end of data, and what a front-end that cannot give the message gets. Messages are signed
with keys made in the test and published in the test DNS server (testsupport/dkimkeys.py)."""
from __future__ import annotations

import authres
import pytest

from checkid.config import HeadersConfig, PolicyConfig
from checkid.engine.decision import Action, Envelope
from checkid.engine.trace import Trace
from testsupport import dkimkeys
from tests.conftest import run, split

IP = "192.0.2.1"
OUTSIDE = "198.51.100.20"  # not in any test SPF record
RATINGS = "ratings=S1:A,M2:A,H1:B"
MESSAGE = (b"From: Alice <alice@dkim.example>\r\nTo: bob@example.org\r\nSubject: the report\r\n"
           b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nHello Bob,\r\n\r\nthe report is attached.\r\n")


@pytest.fixture
def keys(dns):
    """The signing keys, published as sel._domainkey.<domain> for the test identities."""
    rsa, ed = dkimkeys.rsa_key(2048), dkimkeys.ed25519_key()
    for domain in ("dkim.example", "dkim-default.example", "both.example"):
        dkimkeys.publish(dns, domain, "sel", rsa.record)
        dkimkeys.publish(dns, domain, "ed", ed.record)
    return rsa, ed


def mail_time(engine, ident, ip=IP, follows=True, trace=None):
    env = Envelope(ip, ident, "mta.example.org", f"alice@{ident}", ("bob@example.org",), message_follows=follows)
    return run(engine.decide(env, trace))


def end_of_data(engine, ident, message, ip=IP, stream=None, trace=None):
    headers, body = dkimkeys.split_message(message)
    sink = None
    if stream is not None:
        sink = engine.body_digest(headers)
        assert sink is not None
        for chunk in split(body, stream):
            sink.update(chunk)
    env = Envelope(ip, ident, "mta.example.org", f"alice@{ident}", ("bob@example.org",), headers,
                   sink if sink is not None else body)
    return run(engine.decide(env, trace))


def signed(key, domain="dkim.example", selector="sel", message=MESSAGE, **kw):
    return dkimkeys.sign(message, key, domain, selector, **kw)


def authent(decision):
    assert decision.headers and decision.headers[0].label == "Authent:"
    return decision.headers[0].text


def test_mail_time_decision_for_a_dkim_identity_is_continue(make_engine):
    d = mail_time(make_engine(), "dkim.example")
    assert (d.action, d.code, d.xcode, d.headers, d.stage, d.reason) == (
        Action.CONTINUE, 250, "", (), "methods", "pending")
    assert d.text and d.text.isprintable()


def test_end_of_data_with_a_good_signature_accepts_with_the_dkim_header(make_engine, keys):
    rsa, _ = keys
    d = end_of_data(make_engine(), "dkim.example", signed(rsa))
    assert d.action is Action.ACCEPT
    assert authent(d) == f"192.0.2.1 dkim.example DKIM PASS {RATINGS}"
    assert d.results == (("DKIM", "PASS"),)


@pytest.mark.parametrize("cuts", [[], [1], [7, 40], list(range(0, 200, 3))])
def test_a_body_streamed_into_the_engines_sink_verifies(make_engine, keys, cuts):
    _, ed = keys
    d = end_of_data(make_engine(), "dkim.example", signed(ed, selector="ed"), stream=cuts)
    assert authent(d) == f"192.0.2.1 dkim.example DKIM PASS {RATINGS}"


def test_no_sink_when_no_signature_needs_the_body(make_engine):
    headers, _ = dkimkeys.split_message(MESSAGE)
    assert make_engine().body_digest(headers) is None


def test_a_broken_signature_rejects_for_an_authoritative_record(make_engine, keys):
    rsa, _ = keys
    altered = signed(rsa).replace(b"attached", b"ATTACHED")
    d = end_of_data(make_engine(), "dkim.example", altered)
    assert (d.action, d.code, d.xcode) == (Action.REJECT, 550, "5.7.1")
    assert d.text == "Sending MTA '192.0.2.1' not authorized by 'dkim.example'"
    assert d.results == (("DKIM", "FAIL"),)


def test_a_broken_signature_filters_for_a_default_record(make_engine, keys):
    rsa, _ = keys
    altered = signed(rsa, domain="dkim-default.example").replace(b"attached", b"ATTACHED")
    d = end_of_data(make_engine(), "dkim-default.example", altered)
    assert d.action is Action.FILTER and authent(d).startswith("192.0.2.1 dkim-default.example DKIM FAIL")


def test_an_unsigned_message_is_not_authenticated(make_engine):
    d = end_of_data(make_engine(), "dkim.example", MESSAGE)
    # as for any method: a method giving NONE ran (results) but authenticated nothing (Authent)
    assert d.action is Action.FILTER and authent(d) == "192.0.2.1 dkim.example NONE NONE ratings="
    assert d.results == (("DKIM", "NONE"),)


def test_a_signature_of_another_domain_does_not_speak_for_the_identity(make_engine, keys):
    rsa, _ = keys
    d = end_of_data(make_engine(), "dkim.example", signed(rsa, domain="both.example"))
    assert d.action is Action.FILTER and d.results == (("DKIM", "NONE"),)


def test_a_key_lookup_timeout_tempfails(make_engine, keys, dns):
    rsa, _ = keys
    dns.set_fault("sel._domainkey.dkim.example", drop=True)
    d = end_of_data(make_engine(), "dkim.example", signed(rsa))
    assert (d.action, d.code, d.stage) == (Action.TEMPFAIL, 451, "methods")
    assert d.results == (("DKIM", "TEMPERROR"),)


def test_a_key_lookup_timeout_fails_open_when_configured(make_engine, keys, dns):
    rsa, _ = keys
    dns.set_fault("sel._domainkey.dkim.example", drop=True)
    d = end_of_data(make_engine(policy=PolicyConfig(on_temperror="filter")), "dkim.example", signed(rsa))
    assert d.action is Action.FILTER and authent(d).startswith("192.0.2.1 dkim.example DKIM TEMPERROR")


def test_spf_passing_before_dkim_decides_at_mail_time(make_engine):
    d = mail_time(make_engine(), "both.example")
    assert d.action is Action.ACCEPT and authent(d) == f"192.0.2.1 both.example SPF1 PASS {RATINGS}"


def test_an_earlier_failure_does_not_stop_dkim(make_engine, keys):
    rsa, _ = keys
    engine = make_engine()
    d = mail_time(engine, "both.example", ip=OUTSIDE)
    assert d.action is Action.CONTINUE and d.results == (("SPF1", "FAIL"),)
    d = end_of_data(engine, "both.example", signed(rsa, domain="both.example"), ip=OUTSIDE)
    assert d.action is Action.ACCEPT and authent(d) == f"198.51.100.20 both.example DKIM PASS {RATINGS}"
    assert d.results == (("SPF1", "FAIL"), ("DKIM", "PASS"))


def test_a_front_end_that_cannot_give_the_message_gets_a_final_decision_without_dkim(make_engine):
    trace = Trace()
    d = mail_time(make_engine(), "dkim.example", follows=False, trace=trace)
    assert d.action is Action.FILTER and authent(d) == "192.0.2.1 dkim.example NONE NONE ratings="
    assert any("this front-end cannot give it" in m for _, m in trace.lines)
    d = mail_time(make_engine(), "both.example", ip=OUTSIDE, follows=False)
    assert d.action is Action.REJECT and d.results == (("SPF1", "FAIL"),)


def test_authentication_results_list_each_signature(make_engine, keys):
    rsa, ed = keys
    twice = signed(ed, selector="ed", message=signed(rsa, domain="both.example"))
    engine = make_engine(headers=HeadersConfig(authentication_results=True, authserv_id="mx.example.org"))
    d = end_of_data(engine, "dkim.example", twice)
    assert authent(d).startswith("192.0.2.1 dkim.example DKIM PASS")
    header = next(h for h in d.headers if h.label == "Authentication-Results:")
    assert header.text.isprintable()
    ar = authres.parse(f"Authentication-Results: {header.text}")
    assert ar.authserv_id == "mx.example.org"
    found = {(r.method, r.result, r.header_d, r.header_s, r.header_a) for r in ar.results}
    assert found == {("dkim", "pass", "dkim.example", "ed", "ed25519-sha256"),
                     ("dkim", "pass", "both.example", "sel", "rsa-sha256")}
