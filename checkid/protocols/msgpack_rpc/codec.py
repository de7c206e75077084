"""MessagePack-RPC framing over a byte stream. This module does no I/O.

Feed bytes with :meth:`RpcParser.receive_data` and take :class:`Request`,
:class:`Notification` and :class:`Response` events from :meth:`RpcParser.next_event`;
render with :func:`encode_response`, :func:`encode_request`, :func:`encode_notification`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import msgpack

from checkid.errors import ProtocolError
from checkid.protocols.limits import LimitExceeded

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2
#: the largest message accepted: a whole message with headers and body (1 MiB) and slack
MAX_MESSAGE = 2 * 1024 * 1024
#: the deepest nesting of arrays and maps accepted in one message. The deepest a valid call
#: goes is 5 (message, params, the named-params map, Hdrs, a [name, value] pair); anything
#: handed on must stay far below Python's recursion limit (1000), which ``repr`` and ``==``
#: of a nested list hit at about 1,000 levels (msgpack's own stack stops only at 1,024)
MAX_DEPTH = 32
#: the unpacker's first buffer (msgpack would take min(max_buffer_size, 1 MiB)); it grows as
#: a large message arrives. An unpacker exists only while a message is arriving: msgpack never
#: shrinks its buffer (1,000 connections that each once held a 1.9 MB message would keep
#: 1.9 GB), and the object alone is 41 KB (its parse stack), which 10,000 idle connections
#: would hold as 400 MB. Small, so that buffers freed and reused under connection churn do
#: not become resident page by page.
READ_SIZE = 16 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    msgid: int
    method: str
    params: Any


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    params: Any


@dataclass(frozen=True, slots=True)
class Response:
    msgid: int
    error: Any
    result: Any


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A request that can be answered with an error: its msgid is known, the rest is wrong."""

    msgid: int
    error: str


Event = Request | Notification | Response | BadRequest


class MessageRefused(LimitExceeded):
    """A message past a bound; ``msgid`` is set when it could be read (the error reply names it)."""

    def __init__(self, message: str, limit: str, msgid: int | None) -> None:
        super().__init__(message, limit)
        self.msgid = msgid


class MessageTooLarge(MessageRefused):
    """A message larger than the limit; ``msgid`` is set when it could be read."""

    def __init__(self, message: str, msgid: int | None) -> None:
        super().__init__(message, "message_size", msgid)


class MessageTooDeep(MessageRefused):
    """A message nesting arrays and maps deeper than the limit; ``msgid`` is set when it is a
    request whose msgid could be read."""

    def __init__(self, message: str, msgid: int | None) -> None:
        super().__init__(message, "nesting", msgid)


class RpcParser:
    """Turns a stream of MessagePack objects into RPC events.

    :raises ProtocolError: when the stream is not MessagePack or an object is not an RPC
        message (the stream cannot be resynchronised: close it)
    :raises MessageTooLarge: when a message exceeds ``max_message`` bytes
    :raises MessageTooDeep: when a message nests deeper than ``max_depth``
    """

    def __init__(self, max_message: int = MAX_MESSAGE, max_depth: int = MAX_DEPTH) -> None:
        self.max_message = max_message
        self.max_depth = max_depth
        #: while a message is arriving (None between messages: see READ_SIZE)
        self._unpacker: msgpack.Unpacker | None = None
        self._events: deque[Event] = deque()
        #: bytes fed to the current unpacker
        self._fed = 0
        #: the current unpacker's offset where the last complete message ended
        self._end = 0
        #: messages completed so far, for the request deadline
        self.completed = 0
        #: the first bytes of the message not yet complete, to find its msgid if it overflows
        self._head = b""

    def receive_data(self, data: bytes) -> None:
        pending = self._fed > self._end
        if self._unpacker is None:
            self._unpacker = self._new_unpacker()
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            head = (self._head if pending else b"") + data[:64]
            raise MessageTooLarge(f"message larger than {self.max_message} bytes", _msgid_of(head)) from None
        chunk_start = self._fed
        self._fed += len(data)
        try:
            for obj in self._unpacker:
                self._end = self._unpacker.tell()
                self.completed += 1
                if _too_deep(obj, self.max_depth):
                    raise MessageTooDeep(f"message nests arrays and maps deeper than {self.max_depth} levels",
                                         _request_msgid(obj))
                self._events.append(_event(obj))
        except (ValueError, TypeError) as e:  # msgpack's errors are ValueErrors; TypeError: unhashable map key
            raise ProtocolError(f"not MessagePack: {e}") from None
        start = self._end
        if start >= chunk_start:
            self._head = data[start - chunk_start:start - chunk_start + 64]
        elif len(self._head) < 64:
            self._head += data[:64 - len(self._head)]
        if self._fed == self._end:  # between messages: nothing held, not even the unpacker
            self._unpacker, self._fed, self._end = None, 0, 0

    @property
    def unfinished(self) -> int:
        """Bytes held of the message begun and not complete (0: between messages)."""
        return self._fed - self._end

    def _new_unpacker(self) -> msgpack.Unpacker:
        return msgpack.Unpacker(raw=False, max_buffer_size=self.max_message, strict_map_key=False,
                                read_size=min(READ_SIZE, self.max_message))

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None


def _event(obj: Any) -> Event:
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], int):
        raise ProtocolError(f"not an RPC message: {_show(obj)}")
    kind = obj[0]
    if kind == REQUEST and len(obj) == 4:
        _, msgid, method, params = obj
        if not isinstance(msgid, int) or not 0 <= msgid < 2**32:
            raise ProtocolError(f"request msgid is not a 32-bit unsigned integer: {_show(msgid)}")
        if not isinstance(method, str):
            return BadRequest(msgid, f"method name must be a string, got {_show(method)}")
        if not isinstance(params, list):
            return BadRequest(msgid, f"params must be an array, got {_show(params)}")
        return Request(msgid, method, params)
    if kind == NOTIFICATION and len(obj) == 3:
        _, method, params = obj
        if not isinstance(method, str) or not isinstance(params, list):
            raise ProtocolError("malformed notification")
        return Notification(method, params)
    if kind == RESPONSE and len(obj) == 4:
        _, msgid, error, result = obj
        if not isinstance(msgid, int):
            raise ProtocolError("response msgid is not an integer")
        return Response(msgid, error, result)
    raise ProtocolError(f"not an RPC message: {_show(obj)}")


def _too_deep(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests arrays and maps more than ``limit`` levels (the top one counts),
    found without recursion: only containers are visited."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return False


def _request_msgid(obj: Any) -> int | None:
    """The msgid of ``obj`` if it is shaped like a request, to answer its refusal."""
    if isinstance(obj, list) and len(obj) == 4 and obj[0] == REQUEST and isinstance(obj[1], int) \
            and not isinstance(obj[1], bool) and 0 <= obj[1] < 2**32:
        return int(obj[1])
    return None


def _msgid_of(head: bytes) -> int | None:
    """The msgid at the start of a request too large to read whole, if it is there."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(head)
    try:
        if unpacker.read_array_header() == 4 and unpacker.unpack() == REQUEST:
            msgid = unpacker.unpack()
            return msgid if isinstance(msgid, int) else None
    except Exception:  # noqa: BLE001 - anything unreadable means "unknown"
        return None
    return None


def _show(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


def encode_request(msgid: int, method: str, params: list[Any]) -> bytes:
    return msgpack.packb([REQUEST, msgid, method, params], use_bin_type=True)


def encode_notification(method: str, params: list[Any]) -> bytes:
    return msgpack.packb([NOTIFICATION, method, params], use_bin_type=True)


def encode_response(msgid: int, error: Any, result: Any) -> bytes:
    return msgpack.packb([RESPONSE, msgid, error, result], use_bin_type=True)
