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
