"""The messages the DKIM integration tests send through a real Postfix, and what they read
back from its queue: one SMTP transaction, the queue id in the reply, the header fields of
a postcat listing and the Authentication-Results among them (parsed with ``authres``).

Messages are bytes with CRLF line ends, signed with keys published in the running test DNS
server (testsupport/dkimkeys.py)."""
from __future__ import annotations

import re
import smtplib

import authres

from testsupport import dkimkeys
from testsupport.dnsserver import TestDnsServer

#: the authserv-id the tests configure ([headers] authserv_id), and the one :func:`ours` picks
AUTHSERV_ID = "mx.test"
MESSAGE = (b"From: Alice <alice@%(domain)s>\r\nTo: bob@example.org\r\nSubject:  the   report,\r\n  folded \r\n"
           b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <report-1@%(domain)s>\r\n\r\n"
           b"Hello Bob,\r\n\r\nthe report is attached.\r\n")
#: a body line, repeated to make a long message (:func:`message`'s ``filler``)
FILLER = b"the quick brown fox jumps over the lazy dog,  and does it again and again \r\n"
#: Authent and Authentication-Results fields a client brings itself, in several spellings:
#: forged ones naming this site (:data:`AUTHSERV_ID`), and another site's
FORGED = (b"Authent: 192.0.2.1 dkim.example DKIM PASS ratings=S1:A,M2:A,H1:B\r\n"
          b"Authentication-Results: mx.test;\r\n\tdkim=pass header.d=dkim.example header.s=forged\r\n"
          b"Authentication-Results: other.example; spf=pass smtp.mailfrom=dkim.example\r\n"
          b"AUTHENT: 192.0.2.2 dkim.example DKIM PASS ratings=S1:A\r\n"
          b"authentication-results: MX.TEST (forged); spf=pass smtp.mailfrom=dkim.example\r\n")


def signing_keys(dns_server: TestDnsServer) -> dict[str, dkimkeys.SigningKey]:
    """RSA 2048 and Ed25519 keys, published as ``rsa`` and ``ed`` selectors of the DKIM
    identities ``dkim.example`` and ``dkim-default.example``."""
    rsa, ed = dkimkeys.rsa_key(2048), dkimkeys.ed25519_key()
    for domain in ("dkim.example", "dkim-default.example"):
        dkimkeys.publish(dns_server, domain, "rsa", rsa.record)
        dkimkeys.publish(dns_server, domain, "ed", ed.record)
    return {"rsa": rsa, "ed": ed}


def message(domain: str, extra: bytes = b"", filler: int = 0) -> bytes:
    """A message from ``alice@domain``: ``extra`` header lines (CRLF-ended) on top, ``filler``
    more body lines at the end."""
    return extra + MESSAGE % {b"domain": domain.encode()} + FILLER * filler


def signed(key: dkimkeys.SigningKey, selector: str, domain: str, extra: bytes = b"", filler: int = 0,
           canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed")) -> bytes:
    """The message signed for ``d=domain``, then ``extra`` prepended (unsigned: dkimpy signs
    no Authent/Authentication-Results, and an added field breaks no signature)."""
    return extra + dkimkeys.sign(message(domain, filler=filler), key, domain, selector, canonicalize=canonicalize)


def altered(data: bytes) -> bytes:
    """The signed message with its body changed after signing."""
    assert data.count(b"attached") == 1
    return data.replace(b"attached", b"ATTACHED")


def transaction(client: smtplib.SMTP, sender: str, data: bytes) -> tuple[int, str]:
    """MAIL, RCPT, then DATA; the reply to the end of data."""
    assert client.mail(sender)[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    try:
        code, text = client.data(data)
    except smtplib.SMTPDataError as refused:
        error = refused.smtp_error
        return refused.smtp_code, error.decode() if isinstance(error, bytes) else error
    return code, text.decode()


def queued_as(reply: str) -> str:
    """The Postfix queue id in a reply to the end of data (``250 2.0.0 Ok: queued as ID``)."""
    found = re.search(r"queued as ([0-9A-Za-z]+)", reply)
    assert found, reply
    return found.group(1)


def fields(listing: str) -> list[tuple[str, str]]:
    """The header fields of a postcat listing, in order: (name, value unfolded), the value
    without the space after the colon."""
    block = listing.split("*** MESSAGE CONTENTS", 1)[1].split("\n", 1)[1].split("\n\n", 1)[0]
    out: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        elif line:
            name, _, value = line.partition(":")
            out.append((name, value.strip()))
    return out


def named(listing: str, name: str) -> list[str]:
    """The values of the header fields called ``name`` (any case) in a postcat listing."""
    return [value for field_name, value in fields(listing) if field_name.lower() == name.lower()]


def dkim_results(value: str) -> set[tuple[str, str | None]]:
    """The (result, header.d) pairs of the dkim clauses of an Authentication-Results value."""
    header = authres.parse(f"Authentication-Results: {value}")
    return {(r.result, r.header_d) for r in header.results if r.method == "dkim"}


def ours(listing: str) -> list[str]:
    """The Authentication-Results values naming this site's authserv-id (:data:`AUTHSERV_ID`)."""
    return [v for v in named(listing, "Authentication-Results")
            if authres.parse(f"Authentication-Results: {v}").authserv_id.lower() == AUTHSERV_ID]
