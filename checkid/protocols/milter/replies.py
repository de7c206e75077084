"""Rendering a :class:`Decision` as milter responses."""
from __future__ import annotations

from checkid.engine.decision import Action, Decision
from checkid.protocols.milter.events import (ACCEPT, CONTINUE, DISCARD, InsertHeader, Quarantine, ReplyCode,
                                             Response)

#: libmilter's smfi_setreply refuses longer reply lines
MAX_REPLY = 980
#: RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
FOLD_WIDTH = 78


def reply_code(decision: Decision) -> ReplyCode:
    """``y``: checkid's code, enhanced code and text; class-checked, ``%`` doubled (Sendmail
    reads the text as a format), no CR/LF, within libmilter's line limit."""
    tempfail = decision.action is Action.TEMPFAIL
    code = decision.code
    if not (400 <= code < 500 if tempfail else 500 <= code < 600):
        code = 451 if tempfail else 550
    xcode = decision.xcode if decision.xcode[:1] == str(code)[0] else ""
    text = " ".join(decision.text.replace("%", "%%").split())
    line = f"{code} {xcode} {text}" if xcode else f"{code} {text}"
    return ReplyCode(_cut(line, MAX_REPLY))


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    text = text[:limit]
    trailing = len(text) - len(text.rstrip("%"))
    return text[:-1] if trailing % 2 else text  # never leave half of a doubled %


def fold(name: str, value: str, width: int = FOLD_WIDTH) -> str:
    """``value`` folded at spaces with ``\\n\\t`` so that ``Name: value`` lines stay within
    ``width`` (a word longer than a line stays whole)."""
    lines: list[str] = []
    current = ""
    room = width - len(name) - 2  # "Name: "
    for word in value.split():
        if current and len(current) + 1 + len(word) > room:
            lines.append(current)
            current, room = word, width - 1  # continuation lines start with a tab
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return "\n\t".join(lines)


def envelope_verdict(decision: Decision) -> Response:
    """The answer at MAIL or RCPT: refusals now; ACCEPT and FILTER go on to end of message
    (headers can only be inserted there)."""
    if decision.action in (Action.REJECT, Action.TEMPFAIL):
        return reply_code(decision)
    if decision.action is Action.DISCARD:
        return DISCARD
    return CONTINUE


def end_of_message(decision: Decision, can_add_headers: bool, quarantine: str = "",
                   leading_space: bool = False) -> list[Response]:
    """Modifications, then exactly one verdict, for end of message.

    :param leading_space: ``HDR_LEADSPC`` was negotiated: the MTA writes a value as given,
        so it carries the space after the colon itself (Postfix milter8.c ``MILTER8_HDR_SPACE``)
    """
    if decision.action in (Action.REJECT, Action.TEMPFAIL):
        return [reply_code(decision)]
    if decision.action is Action.DISCARD:
        return [DISCARD]
    out: list[Response] = []
    space = " " if leading_space else ""
    if can_add_headers:
        # index 0 is the very top; inserting in reverse keeps the contract's order
        out += [InsertHeader(0, h.label.rstrip(":"), space + fold(h.label.rstrip(":"), h.text))
                for h in reversed(decision.headers)]
    if decision.action is Action.FILTER:
        if quarantine:
            out.append(Quarantine(quarantine))
        out.append(CONTINUE)
    elif decision.action is Action.ACCEPT:
        out.append(ACCEPT)
    else:
        out.append(CONTINUE)
    return out
