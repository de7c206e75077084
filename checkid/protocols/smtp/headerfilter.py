"""Forged header fields taken out of a message as it streams. This module does no I/O.

:class:`HeaderFilter` takes message content (dot-unstuffed, as the front door's codec gives
it) in pieces split anywhere, and gives back what to relay: the header section with every
field the predicate calls forged left out (a folded field is one unit: its continuation lines
go with it), then the body untouched. It collects the header fields as ``(name, raw value)``
(the value is everything after the colon up to the field's final line break, folding kept:
what DKIM hashes) and says where the body starts: after the first empty line, or at the first
line that is not a header field (Postfix's cleanup ends the header section there too).

Memory is bounded: the filter holds one field at a time. A field longer than ``max_field`` is
decided on its first ``max_field`` bytes (its name, and the first line where the
authserv-id of an ``Authentication-Results`` is) and then dropped or passed on as it streams,
so neither a long field nor a forged one can get through by size. The output is the same
however the input is split, and given whole lines it gives back whole lines (the relay's
dot-stuffing needs them).
"""
from __future__ import annotations

from collections.abc import Callable

#: a field is decided on at most this many bytes (Postfix's header_size_limit default,
#: 102400: the backend would cut a longer one anyway)
MAX_FIELD = 100 * 1024
#: fields collected for the end-of-data decision (the same bounds as the milter's)
MAX_HEADERS = 1000
MAX_HEADER_BYTES = 1024 * 1024

#: RFC 5322 §3.6.8 ftext: printable US-ASCII except the colon
_NAME = frozenset(range(33, 127)) - {ord(":")}
_WSP = frozenset(b" \t")
_LF = 10
_CR = 13


class HeaderFilter:
    """Message content in, content to relay out, forged header fields left out.

    :param forged: whether a field (name, raw value) must not be delivered
    :param max_field: bytes of a field held (and decided on) at most
    :param max_headers: fields collected in :attr:`headers` at most
    :param max_header_bytes: bytes of names and values collected at most
    """

    def __init__(self, forged: Callable[[str, str], bool], max_field: int = MAX_FIELD,
                 max_headers: int = MAX_HEADERS, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.forged = forged
        self.max_field = max_field
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        #: the header fields so far, forged ones included (the message as it came)
        self.headers: list[tuple[str, str]] = []
        #: fields left out
        self.removed = 0
        #: every field so far is in :attr:`headers` (False once one was past the bounds)
        self.complete = True
        #: the header section has ended: everything from now on is body
        self.in_body = False
        #: the field being read (whole lines, then maybe part of one), or the start of a line
        self._buf = bytearray()
        #: the name of the field in ``_buf`` (None: ``_buf`` starts a line not yet classified)
        self._name: str | None = None
        #: offset of ``_buf`` up to which the field's line ends have been looked at
        self._scanned = 0
        #: an overlong field streams: "drop" (forged) or "pass"; None otherwise
        self._over: str | None = None
        #: while streaming an overlong field: inside a line (its LF not seen yet)
        self._mid_line = False
        self._header_bytes = 0

    @property
    def held(self) -> int:
        """Bytes held now, waiting for the rest of a field (at most ``max_field``)."""
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """The next content bytes. :returns: (header bytes to relay, body bytes to relay); the
        body bytes are all the body there is (relay them after the header bytes)"""
        if self.in_body:
            return b"", data
        head, body = bytearray(), bytearray()
        self._buf += data
        self._run(head, body, end=False)
        return bytes(head), bytes(body)

    def end(self) -> tuple[bytes, bytes]:
        """The end of the content: what is still held is decided (a last field without a
        line break, or a message that is all header). :returns: as :meth:`feed`"""
        head, body = bytearray(), bytearray()
        if not self.in_body:
            self._run(head, body, end=True)
        return bytes(head), bytes(body)

    # -- the machine ------------------------------------------------------------------------
    def _run(self, head: bytearray, body: bytearray, end: bool) -> None:
        buf = self._buf
        while buf and not self.in_body:
            if self._over is not None:
                if self._stream(head):
                    continue  # the overlong field ended: a new line starts
                return
            if self._name is None:
                if not self._classify(head, body, end):
                    return  # more bytes are needed to tell
                continue
            if not self._scan(head, end):
                return

    def _stream(self, head: bytearray) -> bool:
        """Pass or drop an overlong field's bytes. :returns: False when the buffer ran out
        inside the field, True when a new line (not a continuation) starts the buffer."""
        buf = self._buf
        while buf:
            if self._mid_line:
                lf = buf.find(b"\n")
                n = len(buf) if lf < 0 else lf + 1
                if self._over == "pass":
                    head += buf[:n]
                del buf[:n]
                self._mid_line = lf < 0
            elif buf[0] in _WSP:
                self._mid_line = True
            else:
                self._over = None
                return True
        return False

    def _classify(self, head: bytearray, body: bytearray, end: bool) -> bool:
        """The buffer starts a line: an empty line (the body follows), a field, or a line that
        is not a field (the body starts with it). :returns: False when more bytes are needed"""
        buf = self._buf
        if buf[0] == _LF or buf[:2] == b"\r\n":
            n = 1 if buf[0] == _LF else 2
            head += buf[:n]
            body += buf[n:]
            self._to_body()
            return True
        if buf == b"\r" and not end:
            return False  # a CR LF, or a CR then something else
        limit = min(len(buf), self.max_field)
        i = 0
        while i < limit and buf[i] in _NAME:
            i += 1
        j = i
        while j < limit and buf[j] in _WSP:
            j += 1
        if j == limit and limit < self.max_field and not end:
            return False  # a name, maybe, still coming
        if i and j < limit and buf[j] == ord(":"):
            self._name = buf[:i].decode("ascii")
            self._scanned = 0
            return True
        body += buf
        self._to_body()
        return True

    def _scan(self, head: bytearray, end: bool) -> bool:
        """Look for the end of the field held: a line break followed by a line that does not
        start with white space. :returns: False when more bytes are needed"""
        buf = self._buf
        pos = self._scanned
        while True:
            lf = buf.find(b"\n", pos)
            if lf < 0:
                complete = len(buf) if end else -1
                break
            nxt = lf + 1
            if nxt == len(buf):  # whether the field goes on shows in the next byte
                complete = nxt if end else -1
                pos = lf
                break
            if buf[nxt] in _WSP:
                pos = nxt
                continue
            complete = nxt
            break
        known = complete if complete >= 0 else len(buf)
        if known > self.max_field:  # too long to hold: decided on its first max_field bytes
            n = complete if complete >= 0 else len(buf)
            forged = self._decide(bytes(buf[:self.max_field]))
            if not forged:
                head += buf[:n]
            if complete < 0:
                self._over = "drop" if forged else "pass"
                self._mid_line = buf[n - 1] != _LF
            del buf[:n]
            self._name = None
            return True
        if complete < 0:
            self._scanned = pos
            return False
        if not self._decide(bytes(buf[:complete])):
            head += buf[:complete]
        del buf[:complete]
        self._name = None
        return True

    def _decide(self, field: bytes) -> bool:
        """Record the field (or its first bytes) and say whether it is forged."""
        name = self._name or ""
        value = field[field.index(b":") + 1:]
        if value.endswith(b"\n"):
            value = value[:-2] if value.endswith(b"\r\n") else value[:-1]
        text = value.decode("utf-8", "surrogateescape")
        size = len(name) + len(text)
        if len(self.headers) < self.max_headers and self._header_bytes + size <= self.max_header_bytes:
            self.headers.append((name, text))
            self._header_bytes += size
        else:
            self.complete = False
        forged = self.forged(name, text)
        if forged:
            self.removed += 1
        return forged

    def _to_body(self) -> None:
        self.in_body = True
        self._buf = bytearray()
        self._name = None
