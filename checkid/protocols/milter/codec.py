"""Milter framing and payloads. This module does no I/O.

Every packet is ``uint32 length`` (counting the command byte) + command byte + payload;
strings are NUL-terminated (reference/milter.md §1). :class:`CommandParser` turns an MTA's
byte stream (split or coalesced anywhere) into command events; :func:`encode_response`
renders our answers. The opposite directions (:func:`encode_command`,
:class:`ResponseParser`) serve tests, benchmarks and round-trip properties.
"""
from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable

from checkid.errors import ProtocolError
from checkid.protocols.milter.events import (DISPOSITION_CODES, Abort, AddHeader, AddRecipient, Body, ChangeFrom,
                                             ChangeHeader, Command, Connect, Data, DeleteRecipient, Disposition,
                                             EndOfHeaders, EndOfMessage, HeaderField, Helo, InsertHeader, Macro, Mail,
                                             OptNeg, OptNegReply, Quarantine, Quit, QuitNoClose, Rcpt, ReplaceBody,
                                             ReplyCode, Response, Unknown)

#: Postfix sends a header of up to header_size_limit (100 KiB) in one packet; accept 1 MiB
MAX_PACKET = 1024 * 1024
_LEN = struct.Struct("!I")
_OPTNEG = struct.Struct("!III")


class Framer:
    """Splits a stream into (code, payload) packets, refusing absurd lengths."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buffer = bytearray()
        self._packets: deque[tuple[bytes, bytes]] = deque()
        #: payload bytes of the framed packets not yet taken
        self._framed_bytes = 0
        #: packets framed so far, for the request deadline
        self.completed = 0

    def feed(self, data: bytes) -> None:
        buf = self._buffer
        if buf:  # the rest of a packet begun: framed from the buffer once it is whole
            buf += data
            if len(buf) < 4 or len(buf) - 4 < self._length(buf, 0):
                return
            data = bytes(buf)
            buf.clear()
        packets, size, start = self._packets, len(data), 0
        while size - start >= 4:
            length = self._length(data, start)
            end = start + 4 + length
            if end > size:
                break
            packets.append((data[start + 4:start + 5], data[start + 5:end]))
            self._framed_bytes += length
            self.completed += 1
            start = end
        if start < size:
            buf += memoryview(data)[start:]

    def _length(self, data: bytes | bytearray, start: int) -> int:
        """The length of the packet at ``start``. :raises ProtocolError: out of range"""
        (length,) = _LEN.unpack_from(data, start)
        if length == 0 or length > self.max_packet:
            raise ProtocolError(f"milter packet length {length} out of range 1..{self.max_packet}")
        return length

    def next_packet(self) -> tuple[bytes, bytes] | None:
        if not self._packets:
            return None
        code, payload = self._packets.popleft()
        self._framed_bytes -= 1 + len(payload)
        return code, payload

    @property
    def pending(self) -> int:
        """Packets framed and not yet taken."""
        return len(self._packets)

    @property
    def pending_bytes(self) -> int:
        """Bytes held: the packets framed and not yet taken, and the start of the next one."""
        return self._framed_bytes + len(self._buffer)

    @property
    def unfinished(self) -> int:
        """Bytes held of the packet begun and not complete (0: between packets)."""
        return len(self._buffer)


def frame(code: bytes, payload: bytes = b"") -> bytes:
    return _LEN.pack(len(payload) + 1) + code + payload


def _strings(payload: bytes, what: str) -> list[str]:
    """The NUL-terminated strings of a payload (the last one must be terminated)."""
    if payload and not payload.endswith(b"\0"):
        raise ProtocolError(f"{what}: string not NUL-terminated")
    return [s.decode("utf-8", "surrogateescape") for s in payload[:-1].split(b"\0")] if payload else []


def decode_command(code: bytes, payload: bytes) -> Command:
    """One MTA packet as an event. :raises ProtocolError: on an unknown code or bad payload"""
    decoder = _DECODERS.get(code)
    if decoder is None:
        raise ProtocolError(f"unknown milter command {code!r}")
    return decoder(payload)


def _optneg(payload: bytes) -> Command:
    if len(payload) < 12:
        raise ProtocolError("OPTNEG shorter than 12 bytes")
    return OptNeg(*_OPTNEG.unpack_from(payload))


def _macro(payload: bytes) -> Command:
    if not payload:
        raise ProtocolError("MACRO without a stage")
    items = _strings(payload[1:], "MACRO")
    if len(items) % 2:
        items.append("")  # a name with no value: libmilter takes it as empty
    return Macro(payload[:1], tuple(zip(items[::2], items[1::2])))


def _connect(payload: bytes) -> Command:
    end = payload.find(b"\0")
    if end < 0 or len(payload) < end + 2:
        raise ProtocolError("CONNECT without hostname and family")
    host = payload[:end].decode("utf-8", "surrogateescape")
    family = chr(payload[end + 1])
    rest = payload[end + 2:]
    if family == "U":
        return Connect(host, family)
    if len(rest) < 3:
        raise ProtocolError("CONNECT without port and address")
    (port,) = struct.unpack_from("!H", rest)
    address = _strings(rest[2:], "CONNECT address")
    return Connect(host, family, port, address[0] if address else "")


def _helo(payload: bytes) -> Command:
    strings = _strings(payload, "HELO")
    return Helo(strings[0] if strings else "")


def _unknown(payload: bytes) -> Command:
    strings = _strings(payload, "UNKNOWN")
    return Unknown(strings[0] if strings else "")


def _envelope_args(payload: bytes) -> tuple[str, ...]:
    args = tuple(_strings(payload, "MAIL/RCPT"))
    if not args:
        raise ProtocolError("MAIL/RCPT without an address")
    return args


def _header(payload: bytes) -> Command:
    strings = _strings(payload, "HEADER")
    if len(strings) != 2:
        raise ProtocolError("HEADER is not name and value")
    return HeaderField(strings[0], strings[1])


def _constant(command: Command) -> Callable[[bytes], Command]:
    """The decoder of a command without payload (one immutable event serves them all)."""
    return lambda payload: command


#: command code -> its payload's decoder
_DECODERS: dict[bytes, Callable[[bytes], Command]] = {
    b"O": _optneg, b"D": _macro, b"C": _connect, b"H": _helo, b"U": _unknown,
    b"M": lambda payload: Mail(_envelope_args(payload)), b"R": lambda payload: Rcpt(_envelope_args(payload)),
    b"L": _header, b"T": _constant(Data()), b"N": _constant(EndOfHeaders()), b"A": _constant(Abort()),
    b"Q": _constant(Quit()), b"K": _constant(QuitNoClose()), b"B": Body, b"E": EndOfMessage,
}

class CommandParser(Framer):
    """MTA bytes in, command events out (a :class:`Framer` whose packets come out decoded:
    ``pending`` commands, ``pending_bytes``, ``unfinished`` and ``completed`` as framed)."""

    def receive_data(self, data: bytes) -> None:
        self.feed(data)

    def next_event(self) -> Command | None:
        packets = self._packets
        if not packets:
            return None
        code, payload = packets.popleft()
        self._framed_bytes -= 1 + len(payload)
        return decode_command(code, payload)


def _z(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\0"


#: the packet of each disposition (CONTINUE and ACCEPT go out in every session)
_DISPOSITION_PACKETS = {code: frame(code) for code in DISPOSITION_CODES}


def encode_response(response: Response) -> bytes:
    if isinstance(response, Disposition):
        return _DISPOSITION_PACKETS.get(response.code) or frame(response.code)
    if isinstance(response, ReplyCode):
        return frame(b"y", _z(response.text))
    if isinstance(response, InsertHeader):
        return frame(b"i", _LEN.pack(response.index) + _z(response.name) + _z(response.value))
    if isinstance(response, AddHeader):
        return frame(b"h", _z(response.name) + _z(response.value))
    if isinstance(response, Quarantine):
        return frame(b"q", _z(response.reason))
    if isinstance(response, ChangeHeader):
        return frame(b"m", _LEN.pack(response.index) + _z(response.name) + _z(response.value))
    if isinstance(response, AddRecipient):
        if response.args is None:
            return frame(b"+", _z(response.rcpt))
        return frame(b"2", _z(response.rcpt) + _z(response.args))
    if isinstance(response, DeleteRecipient):
        return frame(b"-", _z(response.rcpt))
    if isinstance(response, ChangeFrom):
        return frame(b"e", _z(response.sender) + (b"" if response.args is None else _z(response.args)))
    if isinstance(response, ReplaceBody):
        return frame(b"b", response.chunk)
    if isinstance(response, OptNegReply):
        lists = b"".join(_LEN.pack(stage) + _z(names) for stage, names in response.macros)
        return frame(b"O", _OPTNEG.pack(response.version, response.actions, response.protocol) + lists)
    raise TypeError(f"not a milter response: {response!r}")


def encode_command(command: Command) -> bytes:
    """An MTA's packet for ``command`` (tests, benchmarks, load)."""
    if isinstance(command, OptNeg):
        return frame(b"O", _OPTNEG.pack(command.version, command.actions, command.protocol))
    if isinstance(command, Macro):
        return frame(b"D", command.stage + b"".join(_z(n) + _z(v) for n, v in command.macros))
    if isinstance(command, Connect):
        tail = b"" if command.family == "U" else struct.pack("!H", command.port) + _z(command.address)
        return frame(b"C", _z(command.hostname) + command.family.encode() + tail)
    if isinstance(command, Helo):
        return frame(b"H", _z(command.name))
    if isinstance(command, Unknown):
        return frame(b"U", _z(command.command))
    if isinstance(command, (Mail, Rcpt)):
        return frame(b"M" if isinstance(command, Mail) else b"R", b"".join(_z(a) for a in command.args))
    if isinstance(command, HeaderField):
        return frame(b"L", _z(command.name) + _z(command.value))
    if isinstance(command, Body):
        return frame(b"B", command.chunk)
    if isinstance(command, EndOfMessage):
        return frame(b"E", command.chunk)
    codes = {Data: b"T", EndOfHeaders: b"N", Abort: b"A", Quit: b"Q", QuitNoClose: b"K"}
    return frame(codes[type(command)])


class ResponseParser:
    """Milter bytes in, response events out (the MTA's side, for tests and load)."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self._framer = Framer(max_packet)

    def receive_data(self, data: bytes) -> None:
        self._framer.feed(data)

    def next_event(self) -> Response | None:
        packet = self._framer.next_packet()
        if packet is None:
            return None
        code, payload = packet
        if code == b"O":
            if len(payload) < 12:
                raise ProtocolError("OPTNEG reply shorter than 12 bytes")
            version, actions, protocol = _OPTNEG.unpack_from(payload)
            lists, rest = [], payload[12:]
            while rest:
                if len(rest) < 5:
                    raise ProtocolError("truncated macro list")
                (stage,) = _LEN.unpack_from(rest)
                end = rest.find(b"\0", 4)
                if end < 0:
                    raise ProtocolError("macro list not NUL-terminated")
                lists.append((stage, rest[4:end].decode()))
                rest = rest[end + 1:]
            return OptNegReply(version, actions, protocol, tuple(lists))
        if code in DISPOSITION_CODES:
            return Disposition(code)
        if code == b"y":
            return ReplyCode(_strings(payload, "REPLYCODE")[0])
        if code == b"i":
            if len(payload) < 4:
                raise ProtocolError("INSHEADER without index")
            (index,) = _LEN.unpack_from(payload)
            name, value = _strings(payload[4:], "INSHEADER")
            return InsertHeader(index, name, value)
        if code == b"h":
            name, value = _strings(payload, "ADDHEADER")
            return AddHeader(name, value)
        if code == b"q":
            return Quarantine(_strings(payload, "QUARANTINE")[0])
        if code == b"m":
            if len(payload) < 4:
                raise ProtocolError("CHGHEADER without index")
            (index,) = _LEN.unpack_from(payload)
            name, value = _strings(payload[4:], "CHGHEADER")
            return ChangeHeader(index, name, value)
        if code in (b"+", b"2", b"-", b"e"):
            strings = _strings(payload, "recipient/sender change")
            if not strings or len(strings) > 2:
                raise ProtocolError(f"response {code!r}: want an address and optional arguments")
            args = strings[1] if len(strings) == 2 else None
            if code == b"-":
                return DeleteRecipient(strings[0])
            if code == b"e":
                return ChangeFrom(strings[0], args)
            return AddRecipient(strings[0], args if code == b"2" else None)
        if code == b"b":
            return ReplaceBody(payload)
        raise ProtocolError(f"unknown milter response {code!r}")
