"""The events of the SMTP front door's codec: what a client sends (command lines, message
content, the end of data, and the errors a line can carry) and what a server answers."""
from __future__ import annotations

import re
from dataclasses import dataclass

#: RFC 3463 §2: class.subject.detail at the start of a reply's text
ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?= |$)")


@dataclass(frozen=True, slots=True)
class Command:
    """One command line: the verb in upper case and the rest of the line, as sent."""

    verb: str
    arg: str = ""


@dataclass(frozen=True, slots=True)
class BadLine:
    """A command line that cannot be taken (too long, a bare LF under ``reject``); the
    session answers it and goes on with the next line."""

    #: "too long", "bare LF" or "bare CR" (a CR inside the line, in any ``bare_lf`` mode)
    reason: str


@dataclass(frozen=True, slots=True)
class DataChunk:
    """Message content: whole lines, CRLF-terminated, dot-unstuffed (the message itself,
    RFC 5321 §4.5.2); :func:`checkid.protocols.smtp.codec.dot_stuff` makes it wire form again."""

    data: bytes


@dataclass(frozen=True, slots=True)
class DataError:
    """The content broke a limit; no more content follows for this message (the rest up
    to its end is discarded) and :class:`EndOfData` still comes at ``<CRLF>.<CRLF>``."""

    #: "line too long", "message too big", "bare CR or LF"
    reason: str


@dataclass(frozen=True, slots=True)
class EndOfData:
    """The client's ``<CRLF>.<CRLF>``."""


ClientEvent = Command | BadLine | DataChunk | DataError | EndOfData


@dataclass(frozen=True, slots=True)
class Reply:
    """A server's reply: its code and its lines (text only, without ``250-``/``250 ``)."""

    code: int
    lines: tuple[str, ...] = ("",)

    @property
    def text(self) -> str:
        """The lines joined with spaces (for logs and one-line contexts)."""
        return " ".join(self.lines)

    @property
    def xcode(self) -> str:
        """The RFC 3463 enhanced code the first line starts with, or ""."""
        match = ENHANCED.match(self.lines[0]) if self.lines else None
        return match.group(0) if match else ""

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400
