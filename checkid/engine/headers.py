"""The headers a decision asks the MTA to prepend."""
from __future__ import annotations

import re

from checkid.engine.decision import Header

_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")


def authent(ip: str, identity: str | None, method: str, result: str, ratings: str) -> Header:
    """``Authent: IP ID METHOD RESULT ratings=...``: always the first header."""
    return Header("Authent:", f"{ip} {identity or '-'} {method} {result} ratings={ratings}")


def authentication_results(authserv_id: str, spf_result: str | None, identity: str | None) -> Header:
    """RFC 8601 ``Authentication-Results`` for the SPF check, when one ran. SPF was checked
    for the identity's domain, so that domain (validated) is what the header names."""
    if spf_result is None or identity is None:
        return Header("Authentication-Results:", f"{authserv_id}; none")
    return Header("Authentication-Results:", f"{authserv_id}; spf={spf_result} smtp.mailfrom={identity}")


def authserv_id_of(value: str) -> str:
    """The authserv-id an ``Authentication-Results`` value names (RFC 8601 §2.2: the first
    token, before an optional version and the ``;``), lower case; comments are skipped."""
    head = _COMMENT.sub(" ", value.split(";", 1)[0])
    words = head.split()
    return words[0].strip('"').lower() if words else ""
