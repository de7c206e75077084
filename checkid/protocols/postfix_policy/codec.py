"""The policy protocol's wire format: ``name=value`` lines ending in an empty line, in; one
``action=...`` line and an empty line, out (Postfix SMTPD_POLICY_README; reference/anchors.md §1).

This module does no I/O: feed bytes with :meth:`RequestParser.receive_data`, take requests
with :meth:`RequestParser.next_event`, and render replies with :func:`encode_reply`.
"""
from __future__ import annotations

from collections import deque

from checkid.errors import ProtocolError

#: Postfix's own SMTP line limit is line_length_limit = 2048; certificate subjects and
#: SASL names stay far below. One attribute line may not exceed this many characters.
MAX_LINE = 8192
#: Postfix 3.7 sends about 30 attributes per request.
MAX_ATTRIBUTES = 128
#: bound on one whole request, in bytes; also bounds what is buffered while it arrives
MAX_REQUEST = 64 * 1024

Request = dict[str, str]


class RequestParser:
    """Splits a byte stream into requests (attribute dicts), in order.

    Lines end in LF (CRLF is taken as LF). An attribute sent twice keeps its last value.
    Blank lines between requests are skipped. A request is checked when its empty line
    arrives (or at EOF), so the outcome does not depend on how the stream was split.
    :raises ProtocolError: on an oversize line or request, too many attributes, a line
        without ``=``, an empty name, or a NUL byte; the connection cannot be trusted after
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._ready: deque[Request] = deque()
        #: requests completed so far (their empty line arrived), for the request deadline
        self.completed = 0

    def receive_data(self, data: bytes) -> None:
        buf = self._buffer
        if buf or b"\r" in data:
            split_crlf = buf.endswith(b"\r")  # a CR at the end of the last chunk may pair with this LF
            buf += data
            if split_crlf or b"\r" in data:
                buf[:] = buf.replace(b"\r\n", b"\n")
            data = bytes(buf)
            buf.clear()
        # the usual read, whole requests with nothing held before, is cut without a copy
        # into the buffer: only what is left of a request begun is kept there
        start, size = 0, len(data)
        while True:
            while start < size and data[start] == 10:  # blank lines between requests
                start += 1
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            self._ready.append(_request(data[start:end + 1]))
            self.completed += 1
            start = end + 2
        if start < size:
            buf += data[start:]
        if len(buf) > MAX_REQUEST:
            raise ProtocolError(f"policy request larger than {MAX_REQUEST} bytes")

    def receive_eof(self) -> None:
        """End of input: a request left without its empty line is taken as complete."""
        block = bytes(self._buffer).strip(b"\n")
        self._buffer.clear()
        if block:
            self._ready.append(_request(block + b"\n"))
            self.completed += 1

    def next_event(self) -> Request | None:
        return self._ready.popleft() if self._ready else None

    @property
    def pending(self) -> bool:
        """Whether part of a request has been received."""
        return bool(self._buffer.strip(b"\n"))

    @property
    def unfinished(self) -> int:
        """Bytes held of the request begun and not complete (0: between requests)."""
        return len(self._buffer)


def _request(block: bytes) -> Request:
    """One request's lines, each ending in LF."""
    if len(block) > MAX_REQUEST:
        raise ProtocolError(f"policy request larger than {MAX_REQUEST} bytes")
    if b"\0" in block:
        raise ProtocolError("NUL byte in policy request")
    lines = block.decode("utf-8", "replace").split("\n")
    del lines[-1]
    # the common case in one pass of C code; on any doubt, the line-by-line check below
    # finds the first bad line and says what is wrong with it
    try:
        attrs: Request = dict([line.split("=", 1) for line in lines])
    except ValueError:
        attrs = {"": ""}  # a line without "=": found below
    if "" in attrs or (len(block) > MAX_LINE and max(map(len, lines)) > MAX_LINE):
        for line in lines:
            name, sep, _value = line.partition("=")
            if not sep or not name:
                raise ProtocolError(f"policy line is not name=value: {line[:60]!r}")
            if len(line) > MAX_LINE:
                raise ProtocolError(f"policy line longer than {MAX_LINE} characters")
    if len(attrs) > MAX_ATTRIBUTES:
        raise ProtocolError(f"policy request with more than {MAX_ATTRIBUTES} attributes")
    return attrs


def encode_request(attrs: dict[str, str]) -> bytes:
    """A request as Postfix sends it (used by tests and load generators)."""
    for name, value in attrs.items():
        if not name or any(c in name for c in "=\n\0") or any(c in value for c in "\n\0"):
            raise ValueError(f"attribute cannot be sent: {name!r}")
    return "".join(f"{n}={v}\n" for n, v in attrs.items()).encode() + b"\n"


def encode_reply(action: str) -> bytes:
    """``action=<action>`` and the empty line. :raises ValueError: on a line break or NUL"""
    if "\n" in action or "\r" in action or "\0" in action:
        raise ValueError("policy action must be one line")
    return b"action=" + action.encode("utf-8") + b"\n\n"


def parse_reply(data: bytes) -> str:
    """The action of one reply (for clients and tests). :raises ProtocolError:"""
    text = data.decode("utf-8", "replace")
    if not text.startswith("action=") or not text.endswith("\n\n") or text.count("\n") != 2:
        raise ProtocolError(f"not a policy reply: {text[:60]!r}")
    return text[len("action="):-2]
