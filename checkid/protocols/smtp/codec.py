"""SMTP framing for the front door, both directions. This module does no I/O.

:class:`CommandParser` is the server side: a client's bytes (split or coalesced anywhere) in,
command lines and message content out. After it yields ``DATA`` it waits until the session
says how the command went (:meth:`CommandParser.start_data` after a 354,
:meth:`CommandParser.resume` otherwise), so pipelined bytes after a refused DATA are read as
commands. Content comes out dot-unstuffed, in whole CRLF-terminated lines; only
``<CRLF>.<CRLF>`` ends it. A bare CR or LF inside DATA is either made a CRLF (``normalize``)
or refused (``reject``), and a line it ends never ends the data (Postfix's
``smtpd_forbid_bare_newline``): ``<LF>.<LF>`` and ``<CR>.<CR>`` are content, so no second
message can be smuggled past the backend. :func:`dot_stuff` turns content back into wire form
for the relay, which writes the one final ``.`` itself.

``STARTTLS`` waits the same way: after a 220 the session calls
:meth:`CommandParser.start_tls`, which throws away whatever the client pipelined behind the
command (RFC 3207 §4.2 and CVE-2011-0411, the STARTTLS command injection: plaintext sent
before the handshake must never be read as if it came through TLS).

:class:`ReplyParser` is the client side, for the backend's replies (multi-line ``250-``/``250 ``);
:func:`encode_reply` and :func:`encode_command` render the other two directions.
"""
from __future__ import annotations

import enum
import re
from collections import deque
from typing import Literal

from checkid.errors import ProtocolError
from checkid.protocols.smtp.events import (BadLine, ClientEvent, Command, DataChunk, DataError, EndOfData,
                                           Reply)

#: RFC 5321 §4.5.3.1.4: a command line is at most 512 octets, CRLF included
MAX_COMMAND_LINE = 512
#: RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets, CRLF included
MAX_TEXT_LINE = 1000
#: RFC 5321 §4.5.3.1.5 says 512 for a reply line; a backend's own replies get some slack
MAX_REPLY_LINE = 2048
#: lines in one reply (an EHLO answer has one per keyword; 100 is far more than any MTA sends)
MAX_REPLY_LINES = 100
#: default message size bound (Postfix's message_size_limit default is 10240000)
MAX_MESSAGE = 10_240_000

BareLf = Literal["normalize", "reject"]
CRLF = b"\r\n"
_EOL = re.compile(rb"[\r\n]")
#: commands after which nothing is read until the session answered them (what follows is
#: content after a 354, or TLS after a 220)
_WAITING_VERBS = frozenset({"DATA", "STARTTLS"})


class Mode(enum.Enum):
    #: reading command lines
    COMMAND = "command"
    #: a DATA or STARTTLS command was yielded; nothing more until the session says how it went
    WAIT = "wait"
    #: reading message content
    DATA = "data"


class CommandParser:
    """Client bytes in, :mod:`events <checkid.protocols.smtp.events>` out.

    :param max_line: command line bound, CRLF included
    :param max_text_line: content line bound, CRLF included
    :param max_size: message size bound (content after unstuffing, CRLFs included)
    :param bare_lf: ``normalize`` (a bare CR or LF ends a line like CRLF) or ``reject``
    """

    def __init__(self, max_line: int = MAX_COMMAND_LINE, max_text_line: int = MAX_TEXT_LINE,
                 max_size: int = MAX_MESSAGE, bare_lf: BareLf = "normalize") -> None:
        self.max_line = max_line
        self.max_text_line = max_text_line
        self.max_size = max_size
        self.bare_lf = bare_lf
        self.mode = Mode.COMMAND
        self._buf = bytearray()
        self._events: deque[ClientEvent] = deque()
        #: discarding an overlong command line up to its LF
        self._skipping = False
        #: the command waiting for the session's answer (in mode WAIT)
        self.waiting = ""
        # message state (reset by start_data)
        self._size = 0
        self._prev_crlf = True
        self._long = False
        self._error = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buf)

    @property
    def has_event(self) -> bool:
        """Whether :meth:`next_event` may have something (for batching replies)."""
        return bool(self._events) or (self.mode is not Mode.WAIT and bool(self._buf))

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def start_data(self) -> None:
        """The session answered 354: what follows is message content."""
        self._answered("DATA")
        self.mode = Mode.DATA
        self._size, self._prev_crlf, self._long, self._error = 0, True, False, False

    def start_tls(self) -> int:
        """The session answered STARTTLS with 220: everything received after the command is
        dropped (it came before the handshake, in plaintext); commands follow, through TLS.

        :returns: the number of bytes dropped (a client that pipelined past STARTTLS)
        """
        self._answered("STARTTLS")
        dropped = len(self._buf)
        self._buf.clear()
        self._skipping = False
        self.mode = Mode.COMMAND
        return dropped

    def resume(self) -> None:
        """The session refused DATA (or STARTTLS): what follows are commands again."""
        self._answered(self.waiting or "a command")
        self.mode = Mode.COMMAND

    def _answered(self, verb: str) -> None:
        if self.mode is not Mode.WAIT or self.waiting != verb:
            raise ProtocolError(f"{verb} answered in mode {self.mode.value} (waiting for {self.waiting or 'nothing'})")
        self.waiting = ""

    def next_event(self) -> ClientEvent | None:
        if not self._events:
            if self.mode is Mode.COMMAND:
                self._command()
            elif self.mode is Mode.DATA:
                self._content()
        return self._events.popleft() if self._events else None

    # -- commands -------------------------------------------------------------------------
    def _command(self) -> None:
        buf = self._buf
        end = buf.find(b"\n")
        if self._skipping:
            if end < 0:
                buf.clear()
                return
            del buf[:end + 1]
            self._skipping = False
            end = buf.find(b"\n")
        if end < 0:
            if len(buf) >= self.max_line:  # no LF in time: the line is too long whatever follows
                buf.clear()
                self._skipping = True
                self._events.append(BadLine("too long"))
            return
        line = bytes(buf[:end])
        del buf[:end + 1]
        if end + 1 > self.max_line:
            self._events.append(BadLine("too long"))
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        elif self.bare_lf == "reject":
            self._events.append(BadLine("bare LF"))
            return
        if b"\r" in line:  # RFC 5321 §2.3.8: a CR only in CRLF; relayed, one inside would end a line early
            self._events.append(BadLine("bare CR"))
            return
        verb, _, arg = line.decode("utf-8", "surrogateescape").partition(" ")
        command = Command(verb.upper(), arg)
        if command.verb in _WAITING_VERBS:
            self.mode, self.waiting = Mode.WAIT, command.verb
        self._events.append(command)

    # -- content --------------------------------------------------------------------------
    def _content(self) -> None:
        buf = self._buf
        out = bytearray()
        pos, n = 0, len(buf)
        ended = False
        while pos < n:
            match = _EOL.search(buf, pos)
            if match is None:
                self._partial(n - pos)
                if self._long:
                    pos = n  # an overlong line's text is never needed: only its end is
                break
            eol = match.start()
            if buf[eol] == 13:  # CR
                if eol + 1 == n:  # CR LF or a bare CR: the next byte tells
                    self._partial(eol - pos)
                    if self._long:
                        del buf[pos:eol]  # keep only the CR
                    break
                crlf = buf[eol + 1] == 10
                nxt = eol + 2 if crlf else eol + 1
            else:
                crlf, nxt = False, eol + 1
            line = bytes(buf[pos:eol])
            pos = nxt
            long, self._long = self._long or len(line) + 2 > self.max_text_line, False
            prev_crlf, self._prev_crlf = self._prev_crlf, crlf
            if not long and line[:1] == b".":
                if len(line) > 1:
                    line = line[1:]  # RFC 5321 §4.5.2: the dot goes only when others follow it
                elif crlf and prev_crlf:
                    ended = True
                    break
            if self._error:
                continue
            if not crlf and self.bare_lf == "reject":
                self._fail("bare CR or LF", out)
            elif long:
                self._fail("line too long", out)
            elif self._size + len(line) + 2 > self.max_size:
                self._fail("message too big", out)
            else:
                self._size += len(line) + 2
                out += line
                out += CRLF
        del buf[:pos]
        if out:
            self._events.append(DataChunk(bytes(out)))
        if ended:
            self._events.append(EndOfData())
            self.mode = Mode.COMMAND

    def _partial(self, length: int) -> None:
        """An unterminated line of ``length`` bytes so far: past the bound, it is long."""
        if length + 2 > self.max_text_line:
            self._long = True

    def _fail(self, reason: str, out: bytearray) -> None:
        if out:
            self._events.append(DataChunk(bytes(out)))
            out.clear()
        self._error = True
        self._events.append(DataError(reason))


def dot_stuff(content: bytes) -> bytes:
    """Whole CRLF-terminated lines in wire form: a leading dot doubled (RFC 5321 §4.5.2)."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if content[:1] == b"." else stuffed


def encode_data(content: bytes) -> bytes:
    """``content`` (CRLF lines) as a client sends it after 354: stuffed, then ``.``."""
    if content and not content.endswith(CRLF):
        content += CRLF
    return dot_stuff(content) + b".\r\n"


def encode_command(verb: str, arg: str = "") -> bytes:
    """One command line. :raises ValueError: a CR or LF inside (it would be two commands)"""
    line = f"{verb} {arg}" if arg else verb
    if "\r" in line or "\n" in line:
        raise ValueError(f"line break inside an SMTP command: {line!r}")
    return line.encode("utf-8", "surrogateescape") + CRLF


def encode_reply(reply: Reply) -> bytes:
    """``250-first`` ... ``250 last``; no CR/LF survives in a line, and each line stays
    within RFC 5321 §4.5.3.1.5's 512 octets."""
    code = f"{reply.code:03d}"
    lines = reply.lines or ("",)
    out = []
    for i, text in enumerate(lines):
        text = text.replace("\r", " ").replace("\n", " ")
        raw = text.encode("utf-8", "surrogateescape")[:MAX_COMMAND_LINE - 6]
        sep = b" " if i == len(lines) - 1 else b"-"
        out.append(code.encode() + sep + raw + CRLF)
    return b"".join(out)


class ReplyParser:
    """Server bytes in, :class:`Reply` events out (the relay's side, and tests')."""

    def __init__(self, max_line: int = MAX_REPLY_LINE, max_lines: int = MAX_REPLY_LINES) -> None:
        self.max_line = max_line
        self.max_lines = max_lines
        self._buf = bytearray()
        self._lines: list[str] = []
        self._code = 0
        self._replies: deque[Reply] = deque()

    def receive_data(self, data: bytes) -> None:
        """:raises ProtocolError: a malformed or overlong reply"""
        buf = self._buf
        buf += data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            self._line(bytes(buf[start:end]).removesuffix(b"\r"))
            start = end + 1
        del buf[:start]
        if len(buf) > self.max_line:
            raise ProtocolError(f"reply line longer than {self.max_line} octets")

    def _line(self, raw: bytes) -> None:
        if len(raw) + 2 > self.max_line:
            raise ProtocolError(f"reply line longer than {self.max_line} octets")
        if len(raw) < 3 or not raw[:3].isdigit() or raw[3:4] not in (b"", b" ", b"-") or raw[:1] not in b"2345":
            raise ProtocolError(f"malformed reply line {raw[:40]!r}")
        code = int(raw[:3])
        if self._lines and code != self._code:
            raise ProtocolError(f"reply code changed inside a multi-line reply: {self._code} then {code}")
        if len(self._lines) >= self.max_lines:
            raise ProtocolError(f"reply longer than {self.max_lines} lines")
        self._code = code
        self._lines.append(raw[4:].decode("utf-8", "surrogateescape"))
        if raw[3:4] != b"-":
            self._replies.append(Reply(code, tuple(self._lines)))
            self._lines = []

    def next_event(self) -> Reply | None:
        return self._replies.popleft() if self._replies else None
