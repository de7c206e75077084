"""Rendering a :class:`Decision` as one policy ``action=`` value (access(5) syntax)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from checkid.engine.decision import Action, Decision

#: RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including the CRLF
MAX_REPLY = 510
#: RFC 5322 §2.1.1: a header line is at most 998 characters
MAX_HEADER = 998


@dataclass(frozen=True, slots=True)
class ReplyOptions:
    #: ACCEPT: prepend the first header (so it is not lost), or answer OK / DUNNO
    accept: Literal["prepend", "ok", "dunno"] = "prepend"
    #: FILTER: prepend the first header or DUNNO; any other value is a ``transport:nexthop``
    #: for ``FILTER transport:nexthop``
    filter: str = "prepend"
    #: TEMPFAIL: the 4xx reply, or ``DEFER_IF_PERMIT`` (defer only if the mail would pass)
    tempfail: Literal["reply", "defer_if_permit"] = "reply"


def render(decision: Decision, options: ReplyOptions = ReplyOptions()) -> str:
    """The action for ``decision``: one line, within the SMTP reply-line limit."""
    action = decision.action
    if action is Action.REJECT or (action is Action.TEMPFAIL and options.tempfail == "reply"):
        return smtp_reply(decision)
    if action is Action.TEMPFAIL:
        return _bounded(f"DEFER_IF_PERMIT {decision.text}")
    if action is Action.DISCARD:
        return _bounded(f"DISCARD {decision.text}")
    if action is Action.ACCEPT:
        if options.accept == "prepend" and decision.headers:
            return prepend(decision)
        return "OK" if options.accept == "ok" else "DUNNO"
    if action is Action.FILTER:
        if options.filter not in ("prepend", "dunno"):
            return f"FILTER {options.filter}"
        if options.filter == "prepend" and decision.headers:
            return prepend(decision)
        return "DUNNO"
    return "DUNNO"  # CONTINUE: no verdict at this stage


def smtp_reply(decision: Decision) -> str:
    code = decision.code
    if not 400 <= code <= 599:
        code = 451 if decision.action is Action.TEMPFAIL else 550
    head = f"{code} {decision.xcode} " if decision.xcode else f"{code} "
    return _bounded(head + decision.text)


def prepend(decision: Decision) -> str:
    header = decision.headers[0]
    return _bounded(f"PREPEND {header.label} {header.text}", MAX_HEADER + len("PREPEND "))


def _bounded(text: str, limit: int = MAX_REPLY) -> str:
    text = " ".join(text.split()) if any(c in text for c in "\r\n\0") else text
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")
