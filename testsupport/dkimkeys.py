"""DKIM keys, signed messages and published key records, for tests and benchmarks.

- :func:`rsa_key` (2048, 1024 or even 512 bits, made with ``cryptography``; cached per
  process, since RSA key generation is slow-ish) and :func:`ed25519_key` (PyNaCl) give a
  :class:`SigningKey`: the private key as dkimpy's ``dkim.sign`` takes it, and the public key
  record text (``v=DKIM1; k=rsa; p=...``).
- :func:`sign` prepends a dkimpy DKIM-Signature to a message.
- :func:`publish` serves a key record from a running :class:`TestDnsServer`: each signing
  domain gets its own zone, ``_domainkey.<domain>``, added at run time (a name under it with
  no record is then NXDOMAIN, "no key"). The zone is rebuilt on every call, so a selector
  published again replaces the old record.

Messages are bytes with CRLF line ends; :func:`split_message` turns one into the engine's
``(headers, body)`` (raw header values: after the colon, folding kept).
"""
from __future__ import annotations

import base64
import functools
import secrets
from dataclasses import dataclass

import dkim
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.zone
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from testsupport.dnsserver import TestDnsServer

#: a TXT character-string holds 255 bytes at most (RFC 1035 §3.3); longer records are split
TXT_STRING = 255


@dataclass(frozen=True)
class SigningKey:
    """A key pair in the forms DKIM uses."""

    #: ``rsa-sha256`` or ``ed25519-sha256``: dkimpy's ``signature_algorithm``
    algorithm: bytes
    #: what ``dkim.sign`` takes: PEM (RSA) or the base64 seed (Ed25519)
    private: bytes
    #: the key record's text, e.g. ``v=DKIM1; k=rsa; p=MIIB...``
    record: str
    bits: int


@functools.cache
def rsa_key(bits: int = 2048) -> SigningKey:
    """An RSA key of ``bits`` bits; the same one for the whole process."""
    if bits >= 1024:
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:  # cryptography refuses to generate short keys, but loads one made from primes
        private = _small_rsa(bits)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigningKey(b"rsa-sha256", pem, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}", bits)


@functools.cache
def ed25519_key() -> SigningKey:
    """An Ed25519 key (RFC 8463); the same one for the whole process."""
    key = nacl.signing.SigningKey.generate()
    public = base64.b64encode(bytes(key.verify_key)).decode()
    return SigningKey(b"ed25519-sha256", base64.b64encode(bytes(key)), f"v=DKIM1; k=ed25519; p={public}", 256)


def sign(message: bytes, key: SigningKey, domain: str, selector: str, *,
         canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed"), length: bool = False,
         include_headers: list[bytes] | None = None) -> bytes:
    """``message`` with a DKIM-Signature by ``key`` for ``d=domain; s=selector`` on top."""
    header: bytes = dkim.sign(message, selector.encode(), domain.encode(), key.private, canonicalize=canonicalize,
                       signature_algorithm=key.algorithm, include_headers=include_headers, length=length)
    return header + message


def txt_strings(record: str) -> list[bytes]:
    """A record's text cut into TXT character-strings of at most 255 bytes."""
    data = record.encode("ascii")
    return [data[i:i + TXT_STRING] for i in range(0, len(data), TXT_STRING)] or [b""]


def publish(server: TestDnsServer, domain: str, selector: str, record: str | None) -> str:
    """Serve ``record`` as ``selector._domainkey.domain`` TXT from ``server`` (None: make
    the zone only, so the selector is NXDOMAIN). Returns the record's name."""
    origin = dns.name.from_text(f"_domainkey.{domain}")
    old = server.zones.zones.get(origin)
    zone = dns.zone.Zone(origin, relativize=False)
    if old is not None:
        for name, node in old.nodes.items():
            zone.nodes[name] = node
    else:
        soa = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA,
                                  f"ns.{origin} hostmaster.{origin} 1 3600 600 86400 60")
        zone.find_rdataset(origin, dns.rdatatype.SOA, create=True).add(soa, 60)
    name = dns.name.from_text(f"{selector}._domainkey.{domain}")
    if record is not None:
        txt = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, txt_strings(record))
        zone.delete_rdataset(name, dns.rdatatype.TXT)
        zone.find_rdataset(name, dns.rdatatype.TXT, create=True).add(txt, 60)
    server.zones.add_zone(zone)
    return name.to_text(omit_final_dot=True)


def split_message(message: bytes) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """``(headers, body)`` as the engine's Envelope holds them: each value raw, everything
    after the colon up to the field's last line break, folding kept."""
    head, _, body = message.partition(b"\r\n\r\n")
    fields: list[list[str]] = []
    for line in head.decode("utf-8", "surrogateescape").split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1][1] += "\r\n" + line
        else:
            name, _, value = line.partition(":")
            fields.append([name, value])
    return tuple((name, value) for name, value in fields), body


def _small_rsa(bits: int) -> rsa.RSAPrivateKey:
    """A short RSA key (below what cryptography generates), for "key too short" tests."""
    e = 65537
    while True:
        p, q = _prime(bits // 2), _prime(bits - bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e and (p * q).bit_length() == bits:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                    rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key()


def _prime(bits: int) -> int:
    while True:
        n = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if all(n % p for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)) and _probably_prime(n):
            return n


def _probably_prime(n: int, rounds: int = 32) -> bool:
    """Miller-Rabin."""
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True
