"""Values that cross the engine's boundary: the envelope in, the decision out."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol


class Action(str, enum.Enum):
    """What the MTA is told to do with the transaction."""

    #: take the mail; it authenticated and its reputation is good
    ACCEPT = "ACCEPT"
    #: refuse with a 5xx reply
    REJECT = "REJECT"
    #: take the mail but hand it to the spam filter; delivery is uncertain
    FILTER = "FILTER"
    #: no verdict yet; ask again at a later stage (e.g. when the body is known)
    CONTINUE = "CONTINUE"
    #: refuse with a 4xx reply; the sender retries
    TEMPFAIL = "TEMPFAIL"
    #: take the mail and drop it
    DISCARD = "DISCARD"


@dataclass(frozen=True, slots=True)
class Header:
    """A header to prepend: ``label`` includes the colon (``Authent:``)."""

    label: str
    text: str

    def as_dict(self) -> dict[str, str]:
        return {"label": self.label, "text": self.text}


class BodySink(Protocol):
    """Where a front-end streams a message body as it arrives (CRLF line ends, dot-unstuffed),
    instead of holding it: what :meth:`Engine.body_digest` returns (DKIM body hashes)."""

    def update(self, chunk: bytes) -> None:
        """The next bytes of the body."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the MTA knows of one SMTP transaction when it asks."""

    #: connecting address, IPv4 or IPv6 text
    ip: str | None = None
    #: identity declared with the SMTP ``ID`` command, None when none was declared
    id: str | None = None
    #: HELO/EHLO name
    helo: str | None = None
    #: MAIL FROM address ('' for the null sender)
    sender: str | None = None
    #: RCPT TO addresses
    rcpts: tuple[str, ...] = ()
    #: message headers as (name, value) pairs, known at end of data; the value is raw: all
    #: after the colon (leading space included) up to the field's final line break, folding
    #: kept (DKIM hashes it as sent)
    headers: tuple[tuple[str, str], ...] = ()
    #: message body, known at end of data: the bytes, or the sink a front-end streamed them to
    body: bytes | BodySink | None = None
    #: False when the front-end kept only the first of the message's header fields (its
    #: bound): DKIM then verifies nothing rather than less than will be delivered
    headers_complete: bool = True
    #: False when the caller cannot ask again at end of data (the policy protocol,
    #: qmail-spp): methods that need the message are then skipped, never answered CONTINUE
    message_follows: bool = True
    #: the login name of a client that authenticated (SASL) as the MTA saw it, else None
    authenticated: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer: an action, the SMTP reply, and headers to prepend."""

    action: Action
    code: int
    xcode: str
    text: str
    headers: tuple[Header, ...] = ()
    #: the pipeline stage that decided (``prescreen``, ``registry``, ``methods`` ...)
    stage: str = ""
    #: short machine-readable reason, for logs and metrics
    reason: str = ""
    #: per-method results, e.g. (("SPF1", "PASS"),)
    results: tuple[tuple[str, str], ...] = field(default=())
    #: the identity the registry was asked about ("" for none) and where it came from
    #: (``id``, ``helo``, ``mail_from``, ``none``; "" for bad input, refused before either)
    identity: str = ""
    identity_source: str = ""
    #: in report mode (``[policy] mode = "report"``): the decision enforcing would have
    #: given (a REJECT, TEMPFAIL or DISCARD), which this one delivers instead; else None
    would: Decision | None = None

    def as_tuple(self) -> tuple[str, tuple[int, str, str], list[dict[str, str]]]:
        """The ``checkID`` contract: ``(action, (code, xcode, text), headers)``."""
        return (
            self.action.value,
            (self.code, self.xcode, self.text),
            [h.as_dict() for h in self.headers],
        )
