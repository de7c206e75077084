"""The headers a decision asks the MTA to prepend: ``Authent:`` and RFC 8601
``Authentication-Results`` (written with ``authres``), and reading the authserv-id of one."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import authres
import authres.core

from checkid.engine.decision import Header

#: RFC 8601 method names for checkid's methods. QR1 (the registry's address check of the
#: HELO name) and CSA (the registry's CSV) have no IANA-registered method: they are written
#: as experimental methods, "x-" names (RFC 8601 §2.7.6), prefixed with checkid's name so
#: that they cannot be taken for anyone else's
METHOD_NAMES = {"SPF1": "spf", "DKIM": "dkim", "QR1": "x-checkid-qr1", "CSV": "x-checkid-csa"}


class _Reason(authres.core.QuotableValue):
    """A ``reason=`` value, quoted unless it is a token (RFC 8601 §2.2: a token or a
    quoted-string). authres leaves any value holding ``@`` bare, which is right for an
    address ``pvalue`` and unparseable for a reason (``@`` is no token character)."""

    def quote_if_needed(self) -> str:
        if re.fullmatch(authres.core.RFC2045_TOKEN_PATTERN, self):
            return str(self)
        return '"%s"' % re.sub(r'(["\\])', r"\\\1", self)


@dataclass(frozen=True, slots=True)
class MethodReport:
    """One result clause of ``Authentication-Results``: a method that ran and what it
    looked at. Empty strings are left out of the clause."""

    #: checkid's method name (``SPF1``, ``DKIM``, ``QR1``, ``CSV``)
    method: str
    #: as RFC 8601 spells it (``pass``, ``fail`` ...)
    result: str
    #: SPF: the domain checked (``smtp.mailfrom``)
    mailfrom: str = ""
    #: QR1, CSA: the HELO name checked (``smtp.helo``)
    helo: str = ""
    #: DKIM: the signature's ``d=``, ``s=`` and ``a=`` (``header.d``/``.s``/``.a``)
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    #: why it did not pass (``reason=``)
    reason: str = ""


def authent(ip: str, identity: str | None, method: str, result: str, ratings: str) -> Header:
    """``Authent: IP ID METHOD RESULT ratings=...``: always the first header."""
    return Header("Authent:", f"{ip} {identity or '-'} {method} {result} ratings={ratings}")


def authentication_results(authserv_id: str, reports: Sequence[MethodReport]) -> Header:
    """RFC 8601 ``Authentication-Results``: the authserv-id, then one clause per method that
    ran, in the order they ran (``none`` when none did). One line: the front-end folds it."""
    results = [_result(r) for r in reports if r.method in METHOD_NAMES]
    value = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results).header_value()
    return Header("Authentication-Results:", value)


def _result(report: MethodReport) -> authres.AuthenticationResult:
    name = METHOD_NAMES[report.method]
    result: authres.AuthenticationResult
    if name == "spf":
        result = authres.SPFAuthenticationResult(result=report.result, smtp_mailfrom=report.mailfrom or None)
    elif name == "dkim":
        result = authres.DKIMAuthenticationResult(result=report.result, header_d=report.domain or None,
                                                  header_s=report.selector or None,
                                                  header_a=report.algorithm or None)
    else:
        props = [authres.AuthenticationResultProperty("smtp", "helo", report.helo)] if report.helo else []
        result = authres.AuthenticationResult(method=name, result=report.result, properties=props)
    if report.reason:
        # what authres does to a reason (unprintable characters become "?"), quoted properly
        result.reason = _Reason(re.sub(r"[^\x20-\x7e]", "?", report.reason))
    return result


def authserv_id_of(value: str) -> str:
    """The authserv-id an ``Authentication-Results`` value names (RFC 8601 §2.2: the first
    token or quoted-string, before an optional version and the ``;``), lower case; "" when
    there is none. Comments (CFWS, RFC 5322 §3.2.2: nested, with quoted-pairs, ``;`` inside)
    are skipped, so a comment cannot hide the id."""
    word: list[str] = []
    depth = 0  # inside this many comments
    quoted = False
    chars = iter(value)
    for c in chars:
        if c == "\\" and (depth or quoted):  # a quoted-pair: the next character as it is
            escaped = next(chars, "")
            if quoted:
                word.append(escaped)
        elif depth:
            depth += {"(": 1, ")": -1}.get(c, 0)
        elif quoted:
            if c == '"':
                break
            word.append(c)
        elif c == '"' and not word:
            quoted = True
        elif c == "(":
            if word:
                break
            depth = 1
        elif c in " \t\r\n;":
            if word or c == ";":
                break
        else:
            word.append(c)
    return "".join(word).lower()
