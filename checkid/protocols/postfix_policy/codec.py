"""The policy protocol's wire format: ``name=value`` lines ending in an empty line, in; one
``action=...`` line and an empty line, out (Postfix SMTPD_POLICY_README; reference/anchors.md §1).

This module does no I/O: feed bytes with :meth:`RequestParser.receive_data`, take requests
with :meth:`RequestParser.next_event`, and render replies with :func:`encode_reply`.
"""
from __future__ import annotations

from collections import deque

from checkid.engine.errors import ProtocolError

#: Postfix's own SMTP line limit is line_length_limit = 2048; certificate subjects and
#: SASL names stay far below. One attribute line may not exceed this.
MAX_LINE = 8192
#: Postfix 3.7 sends about 30 attributes per request.
MAX_ATTRIBUTES = 128
#: bound on one whole request
MAX_REQUEST = 64 * 1024

Request = dict[str, str]


class RequestParser:
    """Splits a byte stream into requests (attribute dicts), in order.

    Lines end in LF (a CR before it is dropped). An attribute sent twice keeps its last
    value. Empty requests (a blank line with no attribute before it) are skipped.
    :raises ProtocolError: on an oversize line or request, a line without ``=``, an empty
        name, or a NUL byte; the connection cannot be trusted after that
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._attrs: Request = {}
        self._size = 0
        self._ready: deque[Request] = deque()

    def receive_data(self, data: bytes) -> None:
        self._buffer += data
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            self._line(bytes(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > MAX_LINE:
            raise ProtocolError(f"policy line longer than {MAX_LINE} bytes")

    def receive_eof(self) -> None:
        """End of input: a request left without its empty line is taken as complete."""
        if self._buffer:
            self._line(bytes(self._buffer))
            self._buffer.clear()
        if self._attrs:
            self._line(b"")

    def next_event(self) -> Request | None:
        return self._ready.popleft() if self._ready else None

    @property
    def pending(self) -> bool:
        """Whether part of a request has been received."""
        return bool(self._buffer or self._attrs)

    def _line(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LINE:
            raise ProtocolError(f"policy line longer than {MAX_LINE} bytes")
        if not line:
            if self._attrs:
                self._ready.append(self._attrs)
                self._attrs, self._size = {}, 0
            return
        name, sep, value = line.partition(b"=")
        if not sep or not name:
            raise ProtocolError(f"policy line is not name=value: {line[:60]!r}")
        if b"\0" in line:
            raise ProtocolError("NUL byte in policy request")
        self._size += len(line) + 1
        if self._size > MAX_REQUEST:
            raise ProtocolError(f"policy request larger than {MAX_REQUEST} bytes")
        key = name.decode("utf-8", "replace")
        if key not in self._attrs and len(self._attrs) >= MAX_ATTRIBUTES:
            raise ProtocolError(f"policy request with more than {MAX_ATTRIBUTES} attributes")
        self._attrs[key] = value.decode("utf-8", "replace")


def encode_request(attrs: dict[str, str]) -> bytes:
    """A request as Postfix sends it (used by tests and load generators)."""
    for name, value in attrs.items():
        if not name or any(c in name for c in "=\n\0") or any(c in value for c in "\n\0"):
            raise ValueError(f"attribute cannot be sent: {name!r}")
    return "".join(f"{n}={v}\n" for n, v in attrs.items()).encode() + b"\n"


def encode_reply(action: str) -> bytes:
    """``action=<action>`` and the empty line. :raises ValueError: on a line break or NUL"""
    if any(c in action for c in "\r\n\0"):
        raise ValueError("policy action must be one line")
    return b"action=" + action.encode("utf-8") + b"\n\n"


def parse_reply(data: bytes) -> str:
    """The action of one reply (for clients and tests). :raises ProtocolError:"""
    text = data.decode("utf-8", "replace")
    if not text.startswith("action=") or not text.endswith("\n\n") or text.count("\n") != 2:
        raise ProtocolError(f"not a policy reply: {text[:60]!r}")
    return text[len("action="):-2]
