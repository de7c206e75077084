"""The headers a decision adds: Authentication-Results, checked by parsing it back with
``authres`` (an independent reader) and by the authserv-id reader forged headers go through."""
from __future__ import annotations

import re

import authres
from hypothesis import given
from hypothesis import strategies as st

from checkid.engine import headers
from checkid.engine.headers import METHOD_NAMES, MethodReport

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.lists(label, min_size=2, max_size=4).map(".".join)
results = st.sampled_from(["pass", "fail", "neutral", "none", "temperror", "permerror", "softfail"])
reasons = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@st.composite
def reports(draw):
    method = draw(st.sampled_from(sorted(METHOD_NAMES)))
    result = draw(results)
    reason = draw(reasons).strip()
    if method == "SPF1":
        return MethodReport(method, result, mailfrom=draw(domains), reason=reason)
    if method == "DKIM":
        return MethodReport(method, result, domain=draw(domains), selector=draw(label),
                            algorithm=draw(st.sampled_from(["rsa-sha256", "ed25519-sha256", "rsa-sha1"])),
                            reason=reason)
    return MethodReport(method, result, helo=draw(domains), reason=reason)


def expected_properties(r: MethodReport) -> dict[str, str]:
    return {k: v for k, v in {"smtp.mailfrom": r.mailfrom, "smtp.helo": r.helo, "header.d": r.domain,
                              "header.s": r.selector, "header.a": r.algorithm}.items() if v}


@given(domains, st.lists(reports(), max_size=5))
def test_authentication_results_parse_back_to_what_was_reported(authserv_id, reported):
    header = headers.authentication_results(authserv_id, reported)
    assert header.label == "Authentication-Results:" and header.text.isprintable()
    parsed = authres.parse(f"Authentication-Results: {header.text}")
    assert parsed.authserv_id == authserv_id
    # authres's parser keeps a quoted string's quoted-pairs (RFC 5322 §3.2.4) as they are
    got = [(r.method, r.result, re.sub(r"\\(.)", r"\1", r.reason or ""),
            {f"{p.type}.{p.name}": p.value for p in r.properties}) for r in parsed.results]
    assert got == [(METHOD_NAMES[r.method], r.result, r.reason, expected_properties(r)) for r in reported]
    assert headers.authserv_id_of(header.text) == authserv_id


def test_methods_without_an_rfc_8601_name_are_left_out():
    header = headers.authentication_results("mx.example.org", [MethodReport("STOP", "fail")])
    assert header.text == "mx.example.org; none"


def test_the_experimental_method_names_are_marked():
    assert {n for m, n in METHOD_NAMES.items() if m in ("QR1", "CSV")} == {"x-checkid-qr1", "x-checkid-csa"}


# -- which incoming fields are forged ------------------------------------------------------

#: values that name this site behind comments RFC 8601 §2.2 allows (CFWS, RFC 5322 §3.2.2)
HIDDEN = ["(;) mx.example.com; dkim=pass header.d=paypal.com",
          "(a (b) c) mx.example.com; dkim=pass",
          "(x\r\n ;y) mx.example.com; spf=pass",
          ' "mx.example.com"; dkim=pass',
          " (c\\) ) MX.Example.COM 1; none"]


def engine(**headers_section):
    from checkid.config import from_dict
    from checkid.engine.engine import Engine
    return Engine(from_dict({"headers": {"authserv_id": "mx.example.com", **headers_section}}))


def test_a_comment_cannot_hide_this_sites_authserv_id():
    e = engine()
    for value in HIDDEN[:3]:  # authres, an independent reader, sees this site's id in these
        assert authres.AuthenticationResultsHeader.parse_value(value).authserv_id.lower() == "mx.example.com"
    for value in HIDDEN:
        assert e.forged_header("Authentication-Results", value), value


def test_foreign_results_stay_and_the_sites_other_ids_are_removed():
    e = engine(site_ids=["mx2.example.com"])
    assert not e.forged_header("Authentication-Results", " other.example; dkim=pass")
    assert not e.forged_header("Authentication-Results", " (mx.example.com) other.example; spf=pass")
    assert e.forged_header("authentication-results", " mx2.example.com; dkim=pass")
    assert e.forged_header("AUTHENT", " 192.0.2.1 example.com SPF1 PASS ratings=")
    assert not e.forged_header("Subject", " mx.example.com; dkim=pass")


def test_results_whose_authserv_id_cannot_be_read_are_removed():
    e = engine()
    for value in ("", " ; dkim=pass", " (unclosed comment mx.example.com; dkim=pass"):
        assert e.forged_header("Authentication-Results", value), value


def _policy_without_dkim(tmp_path) -> str:
    from checkid.engine.policy import DEFAULT_PATH
    source = DEFAULT_PATH.read_text().replace('    "DKIM": (4, 4),\n', "")
    assert '"DKIM"' not in source.split("METHOD_LIST = {", 1)[1].split("}", 1)[0]
    path = tmp_path / "nodkim.py"
    path.write_text(source)
    return str(path)


def test_the_content_a_decision_may_read_follows_the_policy_and_the_forged_header_rule(make_engine, tmp_path):
    from checkid.config import HeadersConfig, PolicyConfig
    # the default policy runs DKIM: headers and body
    assert make_engine().content_needed() == (True, True)
    # no DKIM in its METHOD_LIST: the headers only, for the forged ones to remove
    nodkim = PolicyConfig(path=_policy_without_dkim(tmp_path))
    assert make_engine(policy=nodkim).content_needed() == (True, False)
    # and nothing to remove either: neither
    assert make_engine(policy=nodkim, headers=HeadersConfig(remove=())).content_needed() == (False, False)
