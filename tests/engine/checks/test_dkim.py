"""DKIM verification against keys published in the test DNS server, checked against dkimpy's
own ``dkim.verify`` (with an in-memory key lookup) wherever that can tell."""
from __future__ import annotations

from collections import Counter

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkid.config import DkimConfig, DnsConfig
from checkid.engine.checks.dkim import DkimOutcome, DkimVerifier, Signature
from checkid.engine.checks.dkimbody import BodyHashes
from checkid.engine.dns.cache import MemoryCache
from checkid.engine.dns.client import DnsClient
from checkid.engine.result import Result
from checkid.engine.trace import Trace
from testsupport import dkimkeys
from testsupport.dkimkeys import publish, sign, split_message
from tests.conftest import run, split

DOMAIN = "signer.dkim.test"
MESSAGE = (b"From: Alice <alice@signer.dkim.test>\r\n"
           b"To: bob@example.net\r\n"
           b"Subject: a test\r\n   folded \t here\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Message-ID: <1@signer.dkim.test>\r\n"
           b"\r\n"
           b"Hello  Bob,\t\r\n"
           b"\r\n"
           b"a line with trailing space \r\n"
           b"\r\n\r\n")

#: every key record published, by DNS name: what dkimpy's own verify is given
RECORDS: dict[bytes, bytes] = {}


def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
    return RECORDS.get(name)


def put_key(server, selector: str, key: dkimkeys.SigningKey | None, domain: str = DOMAIN,
            record: str | None = None) -> None:
    text = record if record is not None else (key.record if key is not None else None)
    publish(server, domain, selector, text)
    if text is not None:
        RECORDS[f"{selector}._domainkey.{domain}.".encode()] = text.encode()


def verifier(server, counts=None, timeout=0.5, **dkim_config) -> DkimVerifier:
    client = DnsClient(DnsConfig(nameservers=(server.address,), timeout=timeout, decision_timeout=5.0),
                       MemoryCache(1000))
    return DkimVerifier(client, DkimConfig(**dkim_config), counts if counts is not None else Counter())


def check(v: DkimVerifier, message: bytes, trace: Trace | None = None) -> DkimOutcome:
    headers, body = split_message(message)
    return run(v.verify(headers, body, trace))


def dkimpy_verifies(message: bytes, idx: int = 0) -> bool:
    try:
        return bool(dkim.DKIM(message).verify(idx, dnsfunc=dnsfunc))
    except Exception:  # dkimpy lets PyNaCl's ValueError out for an RSA signature on an Ed25519 key
        return False


KEYS = {"rsa2048": lambda: dkimkeys.rsa_key(2048), "ed25519": dkimkeys.ed25519_key}
CANONS = [(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple"), (b"simple", b"relaxed")]


@pytest.mark.parametrize("kind", sorted(KEYS))
@pytest.mark.parametrize("canon", CANONS, ids=lambda c: b"/".join(c).decode())
def test_verify_passes_a_good_signature(dns, kind, canon):
    key = KEYS[kind]()
    selector = f"{kind}-{canon[0].decode()}-{canon[1].decode()}"
    put_key(dns, selector, key)
    message = sign(MESSAGE, key, DOMAIN, selector, canonicalize=canon)
    assert dkimpy_verifies(message)
    outcome = check(verifier(dns), message)
    assert outcome.signatures == (Signature(Result.PASS, DOMAIN, selector, key.algorithm.decode(),
                                            key.bits, None, ""),)
    assert outcome.result_for(DOMAIN, "exact") == (Result.PASS, outcome.signatures[0])


def test_key_record_is_split_into_txt_strings(dns):
    key = dkimkeys.rsa_key(2048)
    assert len(dkimkeys.txt_strings(key.record)) > 1  # a 2048-bit key does not fit in 255 bytes
    assert b"".join(dkimkeys.txt_strings(key.record)).decode() == key.record


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_verify_fails_an_altered_body(dns, kind):
    key = KEYS[kind]()
    put_key(dns, f"body-{kind}", key)
    message = sign(MESSAGE, key, DOMAIN, f"body-{kind}") + b"appended\r\n"
    assert not dkimpy_verifies(message)
    (sig,) = check(verifier(dns), message).signatures
    assert (sig.result, sig.reason) == (Result.FAIL, "body hash mismatch")


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_verify_fails_an_altered_header(dns, kind):
    key = KEYS[kind]()
    put_key(dns, f"head-{kind}", key)
    message = sign(MESSAGE, key, DOMAIN, f"head-{kind}").replace(b"Subject: a test", b"Subject: a fest")
    assert not dkimpy_verifies(message)
    (sig,) = check(verifier(dns), message).signatures
    assert (sig.result, sig.reason) == (Result.FAIL, "signature mismatch")


def test_verify_missing_key_is_permerror(dns):
    put_key(dns, "present", dkimkeys.ed25519_key())  # the zone exists; "absent" in it does not
    message = sign(MESSAGE, dkimkeys.ed25519_key(), DOMAIN, "absent")
    (sig,) = check(verifier(dns), message).signatures
    assert (sig.result, sig.reason, sig.key_bits) == (Result.PERMERROR, "no key", None)


@pytest.mark.parametrize("fault", [{"drop": True}, {"servfail": True}])
def test_verify_key_lookup_failure_is_temperror(dns, fault):
    key = dkimkeys.ed25519_key()
    put_key(dns, "flaky", key)
    dns.set_fault(f"flaky._domainkey.{DOMAIN}", **fault)
    message = sign(MESSAGE, key, DOMAIN, "flaky")
    (sig,) = check(verifier(dns, timeout=0.2), message).signatures
    assert sig.result is Result.TEMPERROR
    outcome = check(verifier(dns, timeout=0.2), message)
    assert outcome.result_for(DOMAIN, "parent")[0] is Result.TEMPERROR


def test_verify_several_signatures_one_good(dns):
    good, other = dkimkeys.rsa_key(2048), dkimkeys.ed25519_key()
    put_key(dns, "many-good", good)
    put_key(dns, "many-other", other)
    message = sign(MESSAGE, good, DOMAIN, "many-good")
    message = sign(message, other, "elsewhere.dkim.test", "nokey")    # no zone at all: REFUSED
    message = sign(message, good, DOMAIN, "many-other")               # the key is the wrong type
    counts: Counter[tuple[str, ...]] = Counter()
    outcome = check(verifier(dns, counts), message)
    results = [(s.result, s.domain, s.selector) for s in outcome.signatures]
    assert results == [(Result.PERMERROR, DOMAIN, "many-other"),
                       (Result.TEMPERROR, "elsewhere.dkim.test", "nokey"),
                       (Result.PASS, DOMAIN, "many-good")]
    assert [dkimpy_verifies(message, i) for i in range(3)] == [False, False, True]
    assert outcome.result_for(DOMAIN, "exact") == (Result.PASS, outcome.signatures[2])
    assert outcome.result_for("elsewhere.dkim.test", "exact")[0] is Result.TEMPERROR
    assert counts[("dkim_signatures", "PASS")] == 1 and counts[("dkim_signatures", "PERMERROR")] == 1


def test_verify_length_tag_allows_appended_text(dns):
    key = dkimkeys.rsa_key(2048)
    put_key(dns, "len", key)
    signed = sign(MESSAGE, key, DOMAIN, "len", length=True)
    appended = signed + b"-- \r\nunsubscribe here\r\n"
    assert dkimpy_verifies(appended)
    (sig,) = check(verifier(dns), appended).signatures
    _, body = split_message(MESSAGE)
    assert sig.result is Result.PASS
    assert sig.length == len(dkim.canonicalization.Relaxed.canonicalize_body(body))
    plain = sign(MESSAGE, key, DOMAIN, "len") + b"-- \r\nunsubscribe here\r\n"
    (sig,) = check(verifier(dns), plain).signatures
    assert (sig.result, sig.length) == (Result.FAIL, None)


def test_verify_short_rsa_key_fails(dns):
    weak = dkimkeys.rsa_key(512)
    put_key(dns, "weak", weak)
    message = sign(MESSAGE, weak, DOMAIN, "weak")
    assert dkim.DKIM(message, minkey=512).verify(dnsfunc=dnsfunc)  # the signature itself is good
    (sig,) = check(verifier(dns), message).signatures
    assert (sig.result, sig.reason, sig.key_bits) == (Result.FAIL, "key too short (512 bits)", 512)
    (sig,) = check(verifier(dns, min_key_bits=512), message).signatures
    assert sig.result is Result.PASS


def test_verify_body_over_max_body_is_not_verified(dns):
    key = dkimkeys.ed25519_key()
    put_key(dns, "big", key)
    message = sign(MESSAGE, key, DOMAIN, "big")
    (sig,) = check(verifier(dns, max_body=20), message).signatures
    assert (sig.result, sig.reason) == (Result.PERMERROR, "body over max_body, not verified")


def test_verify_big_body_hashed_off_the_loop_passes(dns):
    key = dkimkeys.rsa_key(2048)
    put_key(dns, "huge", key)
    head, _, _ = MESSAGE.partition(b"\r\n\r\n")
    message = sign(head + b"\r\n\r\n" + b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0  12345\t\r\n" * 20000, key, DOMAIN, "huge")
    assert dkimpy_verifies(message)
    (sig,) = check(verifier(dns), message).signatures
    assert sig.result is Result.PASS


def test_verify_max_signatures(dns):
    key = dkimkeys.ed25519_key()
    put_key(dns, "cap", key)
    message = MESSAGE
    for _ in range(4):
        message = sign(message, key, DOMAIN, "cap")
    counts: Counter[tuple[str, ...]] = Counter()
    outcome = check(verifier(dns, counts, max_signatures=2), message)
    assert [s.result for s in outcome.signatures] == [Result.PASS, Result.PASS]
    assert counts[("dkim_signatures_ignored",)] == 2
    assert counts[("dkim_signatures", "PASS")] == 2


def test_result_for_exact_and_parent():
    def sig(result: Result, domain: str) -> Signature:
        return Signature(result, domain, "s", "rsa-sha256", 2048, None, "")

    outcome = DkimOutcome((sig(Result.FAIL, "example.com"), sig(Result.PASS, "example.com"),
                           sig(Result.PERMERROR, "mail.example.com"), sig(Result.NEUTRAL, "")))
    assert outcome.result_for("mail.example.com", "parent") == (Result.PASS, outcome.signatures[1])
    assert outcome.result_for("mail.example.com", "exact") == (Result.PERMERROR, outcome.signatures[2])
    assert outcome.result_for("MAIL.Example.COM.", "exact")[0] is Result.PERMERROR
    assert outcome.result_for("xexample.com", "parent") == (Result.NONE, None)
    assert outcome.result_for("com", "parent") == (Result.NONE, None)
    mixed = DkimOutcome((sig(Result.NEUTRAL, "a.test"), sig(Result.PERMERROR, "a.test"),
                         sig(Result.FAIL, "a.test"), sig(Result.TEMPERROR, "a.test")))
    assert mixed.result_for("a.test", "exact")[0] is Result.TEMPERROR
    assert DkimOutcome(mixed.signatures[:3]).result_for("a.test", "exact")[0] is Result.FAIL
    assert DkimOutcome(mixed.signatures[:2]).result_for("a.test", "exact")[0] is Result.PERMERROR


def test_verify_unsigned_message(dns):
    v = verifier(dns)
    headers, body = split_message(MESSAGE)
    outcome = run(v.verify(headers, body))
    assert outcome == DkimOutcome(())
    assert outcome.result_for(DOMAIN, "parent") == (Result.NONE, None)
    assert v.body_digest(headers) is None
    assert dns.total == 0


@pytest.mark.parametrize("record,reason", [
    ("v=DKIM1; k=rsa; p=", "key revoked"),
    ("v=DKIM1; k=rsa; p=bm90IGEga2V5", "bad key"),
    ("v=DKIM1; k=rsa; h=sha1; p=AAAA", "key h=sha1 does not allow sha256"),
])
def test_verify_unusable_key_is_permerror(dns, record, reason):
    selector = f"broken{abs(hash(record))}"
    put_key(dns, selector, None, record=record)
    message = sign(MESSAGE, dkimkeys.rsa_key(2048), DOMAIN, selector)
    (sig,) = check(verifier(dns), message).signatures
    assert sig.result is Result.PERMERROR and sig.reason.startswith(reason)


@pytest.mark.parametrize("value", [
    " v=1; a=rsa-sha256; d=signer.dkim.test; garbage",         # not a tag list
    " v=1; a=rsa-md5; d=signer.dkim.test; s=x; h=from; bh=AAAA; b=AAAA",  # unknown algorithm
    " v=1; a=rsa-sha256; d=signer.dkim.test; h=from; bh=AAAA; b=AAAA",     # no s=
    " v=1; a=rsa-sha256; c=odd/simple; d=signer.dkim.test; s=x; h=from; bh=AAAA; b=AAAA",
])
def test_verify_unusable_signature_is_neutral(dns, value):
    headers, body = split_message(MESSAGE)
    counts: Counter[tuple[str, ...]] = Counter()
    outcome = run(verifier(dns, counts).verify((("DKIM-Signature", value),) + headers, body))
    (sig,) = outcome.signatures
    assert sig.result is Result.NEUTRAL and sig.reason
    assert counts[("dkim_signatures", "NEUTRAL")] == 1


def test_verify_header_values_with_bare_lf(dns):
    key = dkimkeys.rsa_key(2048)
    put_key(dns, "lf", key)
    headers, body = split_message(sign(MESSAGE, key, DOMAIN, "lf"))
    # a milter's values: folding with a bare "\n"
    milter = tuple((name, value.replace("\r\n", "\n")) for name, value in headers)
    assert any("\n" in value for _, value in milter)
    (sig,) = run(verifier(dns).verify(milter, body)).signatures
    assert sig.result is Result.PASS


def test_verify_trace_names_each_signature(dns):
    key = dkimkeys.rsa_key(2048)
    put_key(dns, "traced", key)
    trace = Trace()
    check(verifier(dns), sign(MESSAGE, key, DOMAIN, "traced", length=True), trace)
    (line,) = [message for stage, message in trace.lines if stage == "dkim"]
    assert f"d={DOMAIN}" in line and "s=traced" in line and "a=rsa-sha256" in line
    assert "2048 bits" in line and " l=" in line and "pass" in line


def test_verify_exceptions_inside_dkimpy_stay_with_one_signature(dns, monkeypatch):
    key = dkimkeys.ed25519_key()
    put_key(dns, "boom", key)
    message = sign(MESSAGE, key, DOMAIN, "boom")

    def broken(self, *args):
        raise ZeroDivisionError("inside dkimpy")

    monkeypatch.setattr(dkim.DKIM, "verify_sig_process", broken)
    (sig,) = check(verifier(dns), message).signatures
    assert sig.result is Result.PERMERROR and "ZeroDivisionError" in sig.reason


@pytest.fixture(scope="module")
def streamed_message(dns_server):
    rsa, ed = dkimkeys.rsa_key(2048), dkimkeys.ed25519_key()
    put_key(dns_server, "stream-rsa", rsa)
    put_key(dns_server, "stream-ed", ed)
    message = sign(MESSAGE + b"more \t text\r\n" * 50, rsa, DOMAIN, "stream-rsa", canonicalize=(b"simple", b"simple"))
    message = sign(message, ed, DOMAIN, "stream-ed", length=True)
    message = sign(message, rsa, DOMAIN, "stream-rsa")
    return message + b"tail\r\n"  # the l= signature passes, the others fail


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 5000), max_size=20))
def test_verify_streamed_body_hashes_equal_bytes(dns_server, streamed_message, cuts):
    v = verifier(dns_server)
    headers, body = split_message(streamed_message)
    sink = v.body_digest(headers)
    assert isinstance(sink, BodyHashes)
    for piece in split(body, cuts):
        sink.update(piece)
    streamed = run(v.verify(headers, sink))
    whole = run(v.verify(headers, body))
    assert streamed == whole
    assert [s.result for s in whole.signatures] == [Result.FAIL, Result.PASS, Result.FAIL]


def test_verify_other_sinks_are_not_verified(dns):
    key = dkimkeys.ed25519_key()
    put_key(dns, "sink", key)
    headers, _ = split_message(sign(MESSAGE, key, DOMAIN, "sink"))

    class Discard:
        def update(self, chunk: bytes) -> None:
            pass

    (sig,) = run(verifier(dns).verify(headers, Discard())).signatures
    assert (sig.result, sig.reason) == (Result.PERMERROR, "body not hashed")


# -- what a sender controls is bounded (review of issue 12) --------------------------------

def unsigned_from(message: bytes, key: dkimkeys.SigningKey, selector: str, include: tuple[bytes, ...]) -> bytes:
    """A good signature over ``include`` that leaves From out (dkimpy's signer refuses to)."""
    import base64
    import hashlib
    import time

    from dkim.canonicalization import CanonicalizationPolicy
    d = dkim.DKIM(message, signature_algorithm=key.algorithm)
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    bh = base64.b64encode(hashlib.sha256(policy.canonicalize_body(d.body)).digest())
    fields = [(b"v", b"1"), (b"a", key.algorithm), (b"c", b"relaxed/relaxed"), (b"d", DOMAIN.encode()),
              (b"s", selector.encode()), (b"t", str(int(time.time())).encode()), (b"h", b":".join(include)),
              (b"bh", bh), (b"b", b"0" * 60)]
    d.signature_algorithm = key.algorithm
    d.hasher = dkim.HASH_ALGORITHMS[key.algorithm]
    pk = dkim.crypto.parse_pem_private_key(key.private)
    return b"DKIM-Signature: " + d.gen_header(fields, list(include), policy, b"DKIM-Signature", pk) + message


def test_a_signature_that_leaves_from_unsigned_is_a_permerror(dns):
    key = dkimkeys.rsa_key(2048)
    put_key(dns, "nofrom", key)
    message = unsigned_from(MESSAGE, key, "nofrom", (b"subject", b"to"))
    assert dkimpy_verifies(message)  # dkimpy's verifier alone lets it pass
    (sig,) = check(verifier(dns), message).signatures
    assert (sig.result, sig.reason, sig.domain) == (Result.PERMERROR, "From field not signed", DOMAIN)


def with_signature(value: bytes) -> bytes:
    return b"DKIM-Signature: " + value + b"\r\n" + MESSAGE


def test_signature_fields_dkimpy_would_take_seconds_over_are_not_used(dns):
    v = verifier(dns)
    runs = with_signature(b"v=1; a=rsa-sha256; d=" + DOMAIN.encode() + b"; s=x; h=from" + b" " * 100
                          + b"x; bh=AAAA; b=AAAA")
    long_field = with_signature(b"v=1; a=rsa-sha256; d=" + DOMAIN.encode() + b"; s=x; h=from; bh=AAAA; b="
                                + b"A" * 9000)
    many = with_signature(b"v=1; a=rsa-sha256; d=" + DOMAIN.encode() + b"; s=x; h=" + b":".join([b"from"] * 101)
                          + b"; bh=AAAA; b=AAAA")
    for message, words in ((runs, "white-space"), (long_field, "longer than"), (many, "101 fields")):
        (sig,) = check(v, message).signatures
        assert sig.result is Result.NEUTRAL and words in sig.reason, sig
    assert dns.count(f"x._domainkey.{DOMAIN}") == 0  # refused before any key was asked for


def test_an_l_tag_too_long_for_a_number_is_neutral_not_an_exception(dns):
    message = with_signature(b"v=1; a=rsa-sha256; d=" + DOMAIN.encode() + b"; s=x; h=from; l=" + b"9" * 5000
                             + b"; bh=AAAA; b=AAAA")
    v = verifier(dns)
    headers, _body = split_message(message)
    assert v.body_digest(headers) is None  # no usable body key, and no ValueError
    (sig,) = check(v, message).signatures
    assert sig.result is Result.NEUTRAL and sig.length is None


def test_keys_past_max_key_bits_or_with_a_huge_exponent_are_not_used(dns):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = dkimkeys.rsa_key(2048)
    put_key(dns, "big", key)
    message = sign(MESSAGE, key, DOMAIN, "big")
    (sig,) = check(verifier(dns, max_key_bits=1024, min_key_bits=512), message).signatures
    assert (sig.result, sig.reason) == (Result.PERMERROR, "key too large (2048 bits)")

    n = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers().n
    der = rsa.RSAPublicNumbers(2**40 + 15, n).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64
    put_key(dns, "exp", None, record="v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())
    (sig,) = check(verifier(dns), sign(MESSAGE, key, DOMAIN, "exp")).signatures
    assert (sig.result, sig.reason) == (Result.PERMERROR, "key exponent too large")


def test_headers_cut_short_by_the_front_end_verify_nothing(dns):
    key = dkimkeys.rsa_key(2048)
    put_key(dns, "cut", key)
    headers, body = split_message(sign(MESSAGE, key, DOMAIN, "cut"))
    v = verifier(dns)
    assert run(v.verify(headers, body)).signatures[0].result is Result.PASS
    (sig,) = run(v.verify(headers, body, complete=False)).signatures
    assert (sig.result, sig.domain) == (Result.PERMERROR, DOMAIN)
    assert sig.reason == "more header fields than were kept"
