"""The front door's own replies, and a :class:`Decision` rendered for SMTP: reply lines and
the header block prepended to a relayed message. Codes and texts live here, not in the
session's handlers."""
from __future__ import annotations

from collections.abc import Iterable
from email.utils import formatdate

from checkid.engine.decision import Action, Decision
from checkid.protocols.milter.replies import fold
from checkid.protocols.smtp.events import Reply

OK = Reply(250, ("2.0.0 Ok",))
SENDER_OK = Reply(250, ("2.1.0 Ok",))
RCPT_OK = Reply(250, ("2.1.5 Ok",))
ID_OK = Reply(250, ("2.1.0 Identity recorded",))
START_DATA = Reply(354, ("End data with <CR><LF>.<CR><LF>",))
QUEUED_NOWHERE = Reply(250, ("2.0.0 Ok",))  # DISCARD: the client must not learn the difference
BYE = Reply(221, ("2.0.0 Bye",))
HELP = Reply(214, ("2.0.0 See RFC 5321",))
VRFY = Reply(252, ("2.5.2 Cannot VRFY user, but will accept message and attempt delivery",))
BAD_SEQUENCE = Reply(503, ("5.5.1 Error: bad sequence of commands",))
NEED_HELO = Reply(503, ("5.5.1 Error: send HELO/EHLO first",))
NESTED_MAIL = Reply(503, ("5.5.1 Error: nested MAIL command",))
NEED_MAIL = Reply(503, ("5.5.1 Error: need MAIL command",))
NEED_RCPT = Reply(503, ("5.5.1 Error: need RCPT command",))
NO_VALID_RCPT = Reply(554, ("5.5.1 Error: no valid recipients",))
ID_SEQUENCE = Reply(503, ("5.5.1 Error: ID only after EHLO and outside a transaction",))
BAD_ID = Reply(501, ("5.5.4 Syntax: ID domain",))
HELO_SYNTAX = Reply(501, ("5.5.4 Syntax: EHLO hostname",))
MAIL_SYNTAX = Reply(501, ("5.5.4 Syntax: MAIL FROM:<address>",))
RCPT_SYNTAX = Reply(501, ("5.5.4 Syntax: RCPT TO:<address>",))
NO_ARGUMENT = Reply(501, ("5.5.4 Syntax: no argument allowed",))
UNKNOWN = Reply(500, ("5.5.2 Error: command not recognized",))
NOT_IMPLEMENTED = Reply(502, ("5.5.1 Error: command not implemented",))
LINE_TOO_LONG = Reply(500, ("5.5.2 Error: line too long",))
BARE_LF = Reply(500, ("5.5.2 Error: bare <LF> received",))
BARE_CR = Reply(500, ("5.5.2 Error: bare <CR> received",))
TOO_MANY_RCPTS = Reply(452, ("4.5.3 Error: too many recipients",))
TOO_MANY_ERRORS = Reply(421, ("4.7.0 Error: too many errors",))
TOO_MANY_COMMANDS = Reply(421, ("4.7.0 Error: too many commands",))
BACKEND_DOWN = Reply(421, ("4.3.0 Service not available, try again later",))
BACKEND_LOST = Reply(451, ("4.3.0 Error: local error in processing, try again later",))
SHUTTING_DOWN = Reply(421, ("4.3.2 Service shutting down",))
TIMEOUT = Reply(421, ("4.4.2 Error: timeout exceeded",))
SESSION_TOO_LONG = Reply(421, ("4.4.2 Error: session too long",))
#: RFC 5321 §3.8: a server that cannot serve the connection answers 421 and closes
TOO_MANY_CONNECTIONS = Reply(421, ("4.7.0 Error: too many connections",))
TOO_MANY_FROM_YOU = Reply(421, ("4.7.0 Error: too many connections from your address",))
#: RFC 1870 §6.1: a declared SIZE above the limit
TOO_BIG = Reply(552, ("5.3.4 Error: message size exceeds fixed limit",))
#: RFC 3207 §4: the 220 before the handshake, and the refusals (Postfix's texts)
READY_FOR_TLS = Reply(220, ("2.0.0 Ready to start TLS",))
TLS_ACTIVE = Reply(554, ("5.5.1 Error: TLS already active",))
TLS_IN_TRANSACTION = Reply(503, ("5.5.1 Error: MAIL transaction in progress",))
STARTTLS_SYNTAX = Reply(501, ("5.5.4 Syntax: STARTTLS",))
#: the content broke a limit: DataError.reason -> reply
DATA_ERRORS = {
    "line too long": Reply(500, ("5.5.2 Error: message line longer than 1000 octets (RFC 5321)",)),
    "message too big": Reply(552, ("5.3.4 Error: message file too big",)),
    "bare CR or LF": Reply(550, ("5.5.2 Error: bare <CR> or <LF> received",)),
}
#: verbs known and deliberately not offered (BDAT: no CHUNKING; STARTTLS without a
#: certificate is answered the same by the session)
UNIMPLEMENTED = frozenset({"BDAT", "AUTH", "ETRN", "TURN", "ATRN", "XCLIENT", "XFORWARD", "SEND",
                           "SOML", "SAML"})


def banner(hostname: str) -> Reply:
    return Reply(220, (f"{hostname} ESMTP checkid",))


def ehlo(hostname: str, helo: str, keywords: Iterable[str]) -> Reply:
    return Reply(250, (f"{hostname} greets {helo}", *keywords))


def for_decision(decision: Decision) -> Reply:
    """checkid's refusal: a code of the action's class (4xx TEMPFAIL, 5xx REJECT), the
    enhanced code only when it agrees with it, the text on one line."""
    tempfail = decision.action is Action.TEMPFAIL
    code = decision.code
    if not (400 <= code < 500 if tempfail else 500 <= code < 600):
        code = 451 if tempfail else 550
    xcode = decision.xcode if decision.xcode[:1] == str(code)[0] else ""
    text = " ".join(decision.text.split())
    return Reply(code, (f"{xcode} {text}" if xcode else text,))


def header_block(decision: Decision | None, received: str = "") -> bytes:
    """The lines prepended to a relayed message: the decision's headers in order (folded at
    78 columns, RFC 5322 §2.2.3), then the front door's own ``Received:`` if given."""
    out = []
    for header in decision.headers if decision is not None else ():
        name = header.label.rstrip(":")
        out.append(f"{name}: {fold(name, header.text)}")
    if received:
        out.append(f"Received: {fold('Received', received)}")
    return "".join(line.replace("\n", "\r\n") + "\r\n" for line in out).encode("utf-8", "surrogateescape")


def received(helo: str | None, ip: str | None, hostname: str, wall: float) -> str:
    """The front door's trace field (RFC 5321 §4.4), for backends that learn no client address."""
    return (f"from {helo or 'unknown'} ([{ip or 'unknown'}]) by {hostname} (checkid) with ESMTP; "
            f"{formatdate(wall).replace('-0000', '+0000')}")
