"""The headers a decision asks the MTA to prepend."""
from __future__ import annotations

from checkid.engine.decision import Header


def authent(ip: str, identity: str | None, method: str, result: str, ratings: str) -> Header:
    """``Authent: IP ID METHOD RESULT ratings=...``: always the first header."""
    return Header("Authent:", f"{ip} {identity or '-'} {method} {result} ratings={ratings}")


def authentication_results(authserv_id: str, spf_result: str | None, sender: str, helo: str | None) -> Header:
    """RFC 8601 ``Authentication-Results`` for the SPF check, when one ran."""
    if spf_result is None:
        return Header("Authentication-Results:", f"{authserv_id}; none")
    prop = f"smtp.mailfrom={sender}" if sender else f"smtp.helo={helo or ''}"
    return Header("Authentication-Results:", f"{authserv_id}; spf={spf_result} {prop}")
