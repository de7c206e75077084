"""DKIM verification (RFC 6376, RSA and Ed25519 keys per RFC 8463) with the engine's DNS.

dkimpy parses the signatures, canonicalizes the headers and checks the signatures; it never
asks DNS and never hashes the body. Each signature's key
(``selector._domainkey.domain`` TXT) is asked through the engine's :class:`DnsClient`, every
signature's at once, so a timeout stays a TEMPERROR and a missing key a PERMERROR (dkimpy's
own lookup folds both into "fail"). The body is hashed by :mod:`.dkimbody`, once per distinct
(canonicalization, hash, ``l=``), either while a front-end streams it (:meth:`body_digest`)
or here, in a worker thread when it is big, so the event loop keeps serving.

Per-signature results are RFC 8601 §2.7.1's: pass; fail (the signature or body hash does
not match, or the key is too short, RFC 8301 §3.2); neutral (a signature that cannot be
used: a syntax error, an unknown algorithm, an expired ``x=``); temperror (the key lookup
failed); permerror (no key, a broken or revoked key, a body over ``max_body``).
"""
from __future__ import annotations

import asyncio
import base64
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

from checkid.config import DkimConfig
from checkid.engine.checks.dkimbody import SLICE, BodyHashes, BodyKey, body_key
from checkid.engine.decision import BodySink
from checkid.engine.dns.client import DnsAnswer, DnsClient, Outcome
from checkid.engine.result import SPELLING, Result
from checkid.engine.trace import Trace

#: which result shows when no signature of the identity passed: the most telling first
#: (a lookup that may work next time, then a real mismatch, then a broken key or record)
_RANK = {Result.TEMPERROR: 4, Result.FAIL: 3, Result.PERMERROR: 2, Result.NEUTRAL: 1}

#: a body this big is hashed in a worker thread: canonicalizing 64 KiB takes up to ~2 ms
THREAD_BODY = SLICE

# Bounds on what a sender controls, so that no signature can hold the event loop: dkimpy's
# regexes over a signature are quadratic in a run of white space (``h=from<60,000 spaces>x``
# costs seconds), header selection costs (h= names x header fields), and RSA is pure Python.
#: a DKIM-Signature field longer than this is not used (real ones are under 2 KiB)
MAX_SIGNATURE = 8192
#: nor one with a longer run of white space (folding needs a few characters)
MAX_SPACE_RUN = 64
#: nor one signing more header fields than this (over-signing doubles a dozen or so)
MAX_SIGNED_FIELDS = 100
#: an RSA public exponent above this is refused (65537 is the norm; the cost grows with it)
MAX_EXPONENT = 2**32
#: l= longer than this many digits is not a length (dkimpy's own bound)
MAX_LENGTH_DIGITS = 76

_SPACE_RUN = re.compile(rb"[ \t\r\n]{%d}" % (MAX_SPACE_RUN + 1))

_SIG_NAME = b"dkim-signature"


@dataclass(frozen=True, slots=True)
class Signature:
    """One DKIM-Signature's outcome."""

    result: Result
    #: d= (lower case, "" when unparseable)
    domain: str
    #: s=
    selector: str
    #: a= ("rsa-sha256", "ed25519-sha256", ...)
    algorithm: str
    #: the key's size, when the key was read
    key_bits: int | None
    #: l= when the signature has one
    length: int | None
    #: "" on pass; "body hash mismatch", "no key", "key too short (512 bits)", ...
    reason: str


@dataclass(frozen=True, slots=True)
class DkimOutcome:
    """Every verified signature of a message, top down."""

    signatures: tuple[Signature, ...]

    def result_for(self, identity: str, match: str) -> tuple[Result, Signature | None]:
        """The DKIM result for ``identity``: PASS when a passing signature's ``d=`` is the
        identity (``match`` "exact") or the identity or one of its parents ("parent");
        else the most telling result among the signatures whose ``d=`` matches; NONE (and
        None) when none does."""
        identity = identity.lower().rstrip(".")
        best: Signature | None = None
        for sig in self.signatures:
            if not sig.domain or not (sig.domain == identity or (
                    match == "parent" and identity.endswith("." + sig.domain))):
                continue
            if sig.result is Result.PASS:
                return Result.PASS, sig
            if best is None or _RANK.get(sig.result, 0) > _RANK.get(best.result, 0):
                best = sig
        return (best.result, best) if best is not None else (Result.NONE, None)


@dataclass(slots=True)
class _Prepared:
    """A signature dkimpy accepted, waiting for its key and the body hash."""

    index: int
    tags: dict[bytes, bytes]
    include: list[bytes]
    header: tuple[bytes, bytes]
    key: BodyKey
    domain: str
    selector: str
    algorithm: str
    length: int | None


class DkimVerifier:
    """Verifies the DKIM signatures of messages; one per process, shared by decisions."""

    def __init__(self, dns: DnsClient, config: DkimConfig, counts: Counter[tuple[str, ...]]) -> None:
        self.dns = dns
        self.config = config
        #: ("dkim_signatures", result) per signature verified, ("dkim_signatures_ignored",)
        #: for those past max_signatures
        self.counts = counts

    def body_digest(self, headers: tuple[tuple[str, str], ...]) -> BodyHashes | None:
        """A sink to stream the body into, hashing what the message's signatures need;
        None when no DKIM-Signature parses (nothing to hash)."""
        keys = []
        for _name, value in _signature_fields(headers)[:self.config.max_signatures]:
            try:
                keys.append(_body_key(parse_tag_value(_raw(value))))
            except (InvalidTagValueList, _Unusable):
                continue
        return BodyHashes(keys, self.config.max_body) if keys else None

    async def verify(self, headers: tuple[tuple[str, str], ...], body: bytes | BodySink | None,
                     trace: Trace | None = None, complete: bool = True) -> DkimOutcome:
        """Verify the first ``max_signatures`` signatures of a message.

        :param headers: the message's (name, raw value) pairs, as in :class:`Envelope`
        :param body: the raw body, or the :class:`BodyHashes` a front-end streamed it to
            (from :meth:`body_digest` over the same headers); None is an empty body
        :param complete: False when the front-end kept only the first of the message's header
            fields: no signature is verified over fewer fields than will be delivered (a
            second From past the bound would go unseen), each is PERMERROR
        :raises DeadlineExceeded: the decision ran out of time waiting for a key
        """
        fields = _signature_fields(headers)
        if not fields:
            return DkimOutcome(())
        limit = self.config.max_signatures
        if len(fields) > limit:
            self.counts[("dkim_signatures_ignored",)] += len(fields) - limit
        d = dkim.DKIM(minkey=self.config.min_key_bits)
        # what dkimpy's own parser makes of a message: [name, value with CRLFs + CRLF]
        d.headers = [[name.encode("utf-8", "surrogateescape"), _raw(value) + b"\r\n"] for name, value in headers]
        d.body = b""
        done: dict[int, Signature] = {}
        prepared: list[_Prepared] = []
        for index in range(min(len(fields), limit)):
            raw = _raw(fields[index][1])
            problem = _field_problem(raw)
            if problem or not complete:
                # what can be read of it names the signature (d=, s=) for the identity's result
                tags = _tags(raw) if len(raw) <= MAX_SIGNATURE else {}
                done[index] = (_neutral(tags, problem) if problem else
                               _neutral(tags, "more header fields than were kept", Result.PERMERROR))
                continue
            outcome = self._prepare(d, index)
            if isinstance(outcome, Signature):
                done[index] = outcome
            else:
                prepared.append(outcome)

        # every key at once; the body is hashed meanwhile
        names = sorted({f"{p.selector}._domainkey.{p.domain}" for p in prepared})
        lookups = {name: asyncio.ensure_future(self.dns.resolve(name, "TXT", trace)) for name in names}
        try:
            hashes = await self._hash_body(body, [p.key for p in prepared]) if prepared else None
            answers = {name: await task for name, task in lookups.items()}
        finally:
            for task in lookups.values():
                task.cancel()
        for p in prepared:
            done[p.index] = self._finish(d, p, answers[f"{p.selector}._domainkey.{p.domain}"], hashes)

        signatures = tuple(done[i] for i in sorted(done))
        for sig in signatures:
            self.counts[("dkim_signatures", sig.result.value)] += 1
            if trace is not None:
                bits = f"{sig.key_bits} bits" if sig.key_bits else "no key"
                length = f" l={sig.length}" if sig.length is not None else ""
                trace.add("dkim", f"d={sig.domain} s={sig.selector} a={sig.algorithm} {bits}{length}: "
                                  f"{SPELLING[sig.result]}" + (f" ({sig.reason})" if sig.reason else ""))
        return DkimOutcome(signatures)

    def _prepare(self, d: dkim.DKIM, index: int) -> _Prepared | Signature:
        """dkimpy's checks of the signature's fields, and what its body hash needs."""
        d.signature_fields = {}  # dkimpy leaves the last signature's there
        try:
            prep = d.verify_headerprep(index)
            if not prep:
                raise dkim.MessageFormatError("no such signature")
            tags, include, sigheaders = prep
            key = _body_key(tags)
            if len(include) > MAX_SIGNED_FIELDS:
                raise _Unusable(f"h= names {len(include)} fields, more than {MAX_SIGNED_FIELDS}")
        except (dkim.ValidationError, dkim.MessageFormatError, _Unusable) as e:
            return _neutral(d.signature_fields, str(e))
        except Exception as e:  # dkimpy's own slips: this signature only, never the message
            return _neutral(d.signature_fields, f"{type(e).__name__}: {e}", Result.PERMERROR)
        if b"from" not in include:  # RFC 6376 §6.1.1: ignore it, PERMFAIL
            return _neutral(tags, "From field not signed", Result.PERMERROR)
        return _Prepared(index, tags, include, sigheaders[index], key, _text(tags[b"d"]).lower(),
                         _text(tags[b"s"]), _text(tags[b"a"]), key[2])

    async def _hash_body(self, body: bytes | BodySink | None, keys: Sequence[BodyKey]) -> BodyHashes | None:
        if isinstance(body, BodyHashes):
            return body
        if body is None:
            body = b""
        if not isinstance(body, bytes):
            return None  # a sink of another kind: the body was not hashed for DKIM
        hashes = BodyHashes(keys, self.config.max_body)
        if len(body) > THREAD_BODY:
            # off the loop: hashlib drops the GIL on big updates and the canonicalization
            # works in SLICE steps, so the loop thread gets the GIL back between them
            await asyncio.to_thread(hashes.update, body)
        else:
            hashes.update(body)
        return hashes

    def _finish(self, d: dkim.DKIM, p: _Prepared, answer: DnsAnswer, hashes: BodyHashes | None) -> Signature:
        def result(res: Result, reason: str = "", bits: int | None = None) -> Signature:
            return Signature(res, p.domain, p.selector, p.algorithm, bits, p.length, reason)

        if answer.is_error:
            return result(Result.TEMPERROR, f"key lookup {answer.outcome.value}")
        if answer.outcome is not Outcome.ANSWER:
            return result(Result.PERMERROR, "no key")
        name = f"{p.selector}._domainkey.{p.domain}."
        key_error = "no key"
        bits: int | None = None
        for record in answer.records:
            txt = b"".join(record)
            try:
                problem = _key_problem(txt, p.algorithm)
                if problem:
                    key_error = problem
                    continue
                d.pk, d.keysize, d.ktag, d.seqtlsrpt = dkim.evaluate_pk(name.encode(), txt)
                bits = d.keysize
                break
            except dkim.KeyFormatError as e:
                key_error = f"bad key: {e}"
            except Exception as e:
                key_error = f"bad key: {type(e).__name__}: {e}"
        else:
            return result(Result.PERMERROR, key_error)
        try:
            if d.ktag == b"rsa" and bits is not None and bits < self.config.min_key_bits:
                return result(Result.FAIL, f"key too short ({bits} bits)", bits)
            if d.ktag == b"rsa" and bits is not None and bits > self.config.max_key_bits:
                return result(Result.PERMERROR, f"key too large ({bits} bits)", bits)
            if d.ktag == b"rsa" and d.pk["publicExponent"] > MAX_EXPONENT:
                return result(Result.PERMERROR, "key exponent too large", bits)
            if hashes is None or p.key not in hashes.keys:
                return result(Result.PERMERROR, "body not hashed", bits)
            digest = hashes.digest(p.key)
            if digest is None:
                return result(Result.PERMERROR, "body over max_body, not verified", bits)
            try:
                expected = base64.b64decode(re.sub(rb"\s+", b"", p.tags[b"bh"]), validate=True)
            except ValueError:
                return result(Result.NEUTRAL, "bh= is not base64", bits)
            if digest != expected:
                return result(Result.FAIL, "body hash mismatch", bits)
            tags = {k: v for k, v in p.tags.items() if k != b"bh"}  # dkimpy must not hash the body again
            if not d.verify_sig_process(tags, list(p.include), p.header, None):
                return result(Result.FAIL, "signature mismatch", bits)
        except dkim.KeyFormatError as e:
            if "too small" in str(e):
                return result(Result.FAIL, f"key too short ({bits} bits)", bits)
            return result(Result.PERMERROR, f"bad key: {e}", bits)
        except (dkim.ValidationError, dkim.MessageFormatError) as e:
            return result(Result.PERMERROR, str(e), bits)
        except Exception as e:  # dkimpy's own slips: this signature only
            return result(Result.PERMERROR, f"{type(e).__name__}: {e}", bits)
        return result(Result.PASS, "", bits)


class _Unusable(Exception):
    """A signature whose body hash cannot be computed (bad c=, a= or l=)."""


def _raw(value: str) -> bytes:
    """A raw header value as bytes with CRLF line breaks (milters send bare LF)."""
    data = value.encode("utf-8", "surrogateescape")
    if b"\n" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _signature_fields(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    # the name exactly as dkimpy compares it, so that the indexes agree
    return [(name, value) for name, value in headers if name.lower() == "dkim-signature"]


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dict(parse_tag_value(value))
    except InvalidTagValueList:
        return {}


def _field_problem(value: bytes) -> str:
    """Why a DKIM-Signature field is not handed to dkimpy at all ("" when it may be)."""
    if len(value) > MAX_SIGNATURE:
        return f"signature field longer than {MAX_SIGNATURE} bytes"
    if _SPACE_RUN.search(value):
        return f"signature field with a run of more than {MAX_SPACE_RUN} white-space characters"
    return ""


def _body_key(tags: dict[bytes, bytes]) -> BodyKey:
    """:raises _Unusable: c=, a= or l= that cannot be used"""
    try:
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError as e:
        raise _Unusable(f"invalid c= value: {e}") from None
    algorithm = tags.get(b"a", b"")
    if algorithm not in dkim.HASH_ALGORITHMS:
        raise _Unusable(f"unknown signature algorithm: {_text(algorithm)}")
    length = tags.get(b"l")
    if length is not None and (not length.isdigit() or len(length) > MAX_LENGTH_DIGITS):
        raise _Unusable(f"l= value is not a decimal integer ({_text(length)})")
    return body_key(_text(policy.body_algorithm.name), _text(algorithm), int(length) if length is not None else None)


def _key_problem(txt: bytes, algorithm: str) -> str:
    """Why a key record cannot serve a signature of ``algorithm`` (RFC 6376 §3.6.1, §6.1.2):
    revoked (empty p=), another key type than a= names, a hash its h= does not allow; ""
    when none. dkimpy's ``evaluate_pk`` checks the rest."""
    try:
        tags = parse_tag_value(txt)
    except InvalidTagValueList as e:
        return f"bad key: {e}"
    if b"p" in tags and not tags[b"p"]:
        return "key revoked"
    kind, _, hash_name = algorithm.partition("-")
    if _text(tags.get(b"k", b"rsa")).lower() != kind:
        return f"key type k={_text(tags.get(b'k', b'rsa'))} does not suit a={algorithm}"
    allowed = tags.get(b"h")
    if allowed is not None and hash_name not in {_text(h).strip().lower() for h in allowed.split(b":")}:
        return f"key h={_text(allowed)} does not allow {hash_name}"
    return ""


def _neutral(fields: Any, reason: str, result: Result = Result.NEUTRAL) -> Signature:
    """A signature that could not be used, with what could be read of it."""
    tags: dict[bytes, bytes] = fields if isinstance(fields, dict) else {}
    length = tags.get(b"l")
    return Signature(result, _text(tags.get(b"d", b"")).lower(), _text(tags.get(b"s", b"")),
                     _text(tags.get(b"a", b"")), None,
                     int(length) if length is not None and length.isdigit() and len(length) <= MAX_LENGTH_DIGITS
                     else None, reason)
