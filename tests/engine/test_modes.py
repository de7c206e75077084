"""Report mode (``[policy] mode = "report"``), the ``[prescreen]`` skip lists, and how the
decision log shows addresses (``[policy] log_addresses``)."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from checkid.config import HeadersConfig, PolicyConfig, PrescreenConfig, from_dict
from checkid.engine.decision import Action, Envelope
from checkid.engine.trace import Trace
from checkid.errors import ConfigError
from tests.conftest import run

REPORT = PolicyConfig(mode="report")


def standard_form(text: str) -> list[str]:
    """The words of an ``Authent:`` value, checked to begin ``IP ID METHOD RESULT ratings=``."""
    words = text.split()
    assert len(words) >= 5 and words[4].startswith("ratings="), text
    return words


def test_report_mode_delivers_a_reject_and_says_what_would_have_happened(make_engine):
    enforcing = run(make_engine().decide(Envelope("192.0.2.1", "example.net")))
    assert enforcing.action is Action.REJECT and not enforcing.headers
    decision = run(make_engine(policy=REPORT).decide(Envelope("192.0.2.1", "example.net")))
    assert (decision.action, decision.code, decision.xcode) == (Action.ACCEPT, 250, "")
    assert decision.would == enforcing
    (authent,) = decision.headers
    words = standard_form(authent.text)
    assert authent.label == "Authent:" and words[:2] == ["192.0.2.1", "example.net"]
    assert (words[2], words[3]) in enforcing.results and words[-1] == "would=REJECT"


def test_report_mode_delivers_a_tempfail_with_authentication_results_too(make_engine, dns):
    dns.set_fault("slow.example.registry.test", drop=True)
    engine = make_engine(policy=REPORT, headers=HeadersConfig(authentication_results=True, authserv_id="mx.test"))
    decision = run(engine.decide(Envelope("192.0.2.1", None, "slow.example", "a@slow.example")))
    assert decision.action is Action.ACCEPT and decision.would is not None
    assert decision.would.action is Action.TEMPFAIL and decision.would.code == 451
    assert [h.label for h in decision.headers] == ["Authent:", "Authentication-Results:"]
    assert standard_form(decision.headers[0].text)[-1] == "would=TEMPFAIL"
    assert decision.headers[1].text.startswith("mx.test")


def test_report_mode_keeps_the_headers_of_what_passes_and_adds_would_only_to_refusals(make_engine):
    env = Envelope("192.0.2.1", "example.com")
    enforcing = run(make_engine().decide(env))
    reporting = run(make_engine(policy=REPORT).decide(env))
    assert enforcing.action is Action.ACCEPT and reporting == enforcing and reporting.would is None


def test_report_mode_still_refuses_bad_input(make_engine):
    decision = run(make_engine(policy=REPORT).decide(Envelope("not an address", "example.com")))
    assert decision.action is Action.REJECT and decision.stage == "input" and decision.would is None


def test_report_mode_counts_what_it_did_not_enforce(make_engine):
    engine = make_engine(policy=REPORT)
    run(engine.decide(Envelope("192.0.2.1", "example.net"), frontend="milter"))
    assert engine.counts[("report_mode_refusals", "milter", "REJECT")] == 1
    assert engine.counts[("decisions", "milter", "ACCEPT", "methods")] == 1


@pytest.mark.parametrize("prescreen, env, reason", [
    (PrescreenConfig(allow=(), skip_helo=("relay.example.net",)),
     Envelope("192.0.2.1", None, "Relay.Example.NET.", "a@example.net"), "skip_helo"),
    (PrescreenConfig(allow=(), skip_helo=(".partners.example",)),
     Envelope("192.0.2.1", None, "mx1.partners.example", "a@example.net"), "skip_helo"),
    (PrescreenConfig(allow=(), skip_sender_domains=("example.net",)),
     Envelope("192.0.2.1", "example.net", "h.example", "<Alice@EXAMPLE.net>"), "skip_sender"),
    (PrescreenConfig(allow=(), skip_recipients=("postmaster@example.org", "abuse.example")),
     Envelope("192.0.2.1", "example.net", "h", "a@example.net", ("Postmaster@example.org", "x@abuse.example")),
     "skip_recipients"),
    (PrescreenConfig(allow=()),
     Envelope("192.0.2.1", "example.net", "h", "a@example.net", authenticated="alice"), "skip_authenticated"),
])
def test_a_skipped_transaction_is_accepted_without_a_dns_query(make_engine, dns, prescreen, env, reason):
    engine = make_engine(prescreen=prescreen)
    trace = Trace()
    decision = run(engine.decide(env, trace))
    assert (decision.action, decision.stage, decision.reason) == (Action.ACCEPT, "skip", reason)
    assert standard_form(decision.headers[0].text)[2:4] == ["SKIP", "NONE"]
    assert dns.total == 0
    assert engine.counts[("skipped", reason)] == 1


@pytest.mark.parametrize("prescreen, env", [
    (PrescreenConfig(allow=(), skip_helo=("relay.example.net",)), Envelope("192.0.2.1", "example.net", "x.relay.example.net")),
    (PrescreenConfig(allow=(), skip_helo=(".partners.example",)), Envelope("192.0.2.1", "example.net", "partners.example")),
    (PrescreenConfig(allow=(), skip_sender_domains=("example.org",)),
     Envelope("192.0.2.1", "example.net", "h", "a@sub.example.org")),
    # one listed recipient does not carry the mail to the others
    (PrescreenConfig(allow=(), skip_recipients=("postmaster@example.org",)),
     Envelope("192.0.2.1", "example.net", "h", "a@example.net", ("postmaster@example.org", "bob@example.org"))),
    (PrescreenConfig(allow=(), skip_authenticated=False),
     Envelope("192.0.2.1", "example.net", "h", "a@example.net", authenticated="alice")),
])
def test_what_is_not_on_a_skip_list_is_checked(make_engine, dns, prescreen, env):
    decision = run(make_engine(prescreen=prescreen).decide(env))
    assert decision.action is Action.REJECT and decision.stage == "methods"
    assert dns.total > 0


def test_skip_recipients_have_a_class_of_their_own(make_engine):
    engine = make_engine(prescreen=PrescreenConfig(skip_recipients=("postmaster@example.org", ".example.com")))
    classes = {r: engine.recipient_class(r) for r in
               ("<PostMaster@example.org>", "a@mx.example.com", "b@example.org", "c@example.com")}
    assert classes["<PostMaster@example.org>"] == classes["a@mx.example.com"] != ""
    assert classes["b@example.org"] == classes["c@example.com"] == ""


@pytest.mark.parametrize("key, entry", [
    ("skip_helo", "not a name"), ("skip_helo", ""), ("skip_sender_domains", "a@example.com"),
    ("skip_sender_domains", "a..b"), ("skip_recipients", "@example.com"), ("skip_recipients", "a@.example.com"),
    ("skip_recipients", "a@b c"),
])
def test_a_skip_entry_that_is_no_name_is_refused_with_its_key(key, entry):
    with pytest.raises(ConfigError, match=rf"prescreen\.{key}\[1\]"):
        from_dict({"prescreen": {key: ["good.example", entry]}})


def test_a_policy_mode_other_than_enforce_or_report_is_refused():
    with pytest.raises(ConfigError, match=r"policy\.mode"):
        from_dict({"policy": {"mode": "warn"}})


def test_log_addresses_are_plain_by_default_and_hashed_when_asked(make_engine):
    assert make_engine().log_address("Alice@Example.COM") == "Alice@Example.COM"
    plain = make_engine(policy=PolicyConfig(log_addresses="hashed"))
    keyed = make_engine(policy=PolicyConfig(log_addresses="hashed", log_hash_key="s3cret"))
    assert plain.log_address("Alice@Example.COM") == hashlib.sha256(b"alice@example.com").hexdigest()[:16]
    assert keyed.log_address("Alice@Example.COM") == \
        hmac.new(b"s3cret", b"alice@example.com", hashlib.sha256).hexdigest()[:16]
    assert plain.log_address("") == ""  # the null sender stays visible
