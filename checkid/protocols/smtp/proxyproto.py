"""The HAProxy PROXY protocol, versions 1 and 2 (haproxy doc/proxy-protocol.txt, 2020/03/05;
reference/front-door.md §1.3): the header a load balancer puts before the SMTP stream, in;
the header the front door puts before its own stream to a backend, out.

This module does no I/O. Feed what the peer sent to :meth:`ProxyParser.receive_data` until
:attr:`ProxyParser.header` is set; the bytes after the header are in
:attr:`ProxyParser.remainder`. :func:`encode_v1` and :func:`encode_v2` render a header.

The receiver rules kept here (spec §2): the version is told from the first bytes, and a first
byte that starts neither signature is refused at once; a header is never guessed absent (a
listener that takes the PROXY protocol takes nothing else, and the parser waits, bounded, for
the whole header: the caller owns the timeout); anything that does not match the format
exactly is refused, since the connection cannot be trusted after.
"""
from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

from checkid.errors import ProtocolError

#: the version 1 header starts with these six bytes ("PROXY" and exactly one space, §2.1)
V1_PREFIX = b"PROXY "
#: §2.1: the longest version 1 line, "PROXY UNKNOWN" with two full IPv6 addresses and ports,
#: is 107 bytes including CRLF; no CRLF within the first 107 bytes makes the line invalid
V1_MAX_LINE = 107
#: §2.2: the 12-byte version 2 signature
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: signature, version/command, family/transport, length (§2.2, struct proxy_hdr_v2)
V2_FIXED = 16
#: bound on the v2 length field (address block and TLVs). The spec sizes headers to fit one
#: 536-byte segment (§2); the largest address block is AF_UNIX's 216 bytes, and every
#: registered TLV at its largest (AUTHORITY a host name ≤ 255, UNIQUE_ID ≤ 128 (§2.2.5), SSL
#: with version/CN/cipher/algorithms, ALPN, CRC32C, NETNS) plus the cloud vendors' 0xE0-0xEF
#: ones stay below 1 KiB. 4 KiB leaves headroom for custom TLVs, while a peer cannot make us
#: hold the 64 KiB the 16-bit field allows on every connection before the banner.
V2_MAX_LENGTH = 4096

_V2_VERSION = 0x2
_V2_LOCAL, _V2_PROXY = 0x0, 0x1
#: §2.2: the only valid family/transport bytes; anything else must be refused
_V2_FAMILIES = {0x00: "UNSPEC", 0x11: "TCP4", 0x12: "UDP4", 0x21: "TCP6", 0x22: "UDP6", 0x31: "UNIX", 0x32: "UNIXDGRAM"}
#: address block length per family taken with the PROXY command (§2.2, union proxy_addr)
_V2_ADDRESS_LENGTH = {0x11: 12, 0x21: 36, 0x31: 216}
_V2_IPV4 = struct.Struct("!4s4sHH")
_V2_IPV6 = struct.Struct("!16s16sHH")
_V2_UNIX_PATH = 108
_HEAD = struct.Struct("!BBH")
_TLV = struct.Struct("!BH")

#: registered TLV types (§2.2) this module checks
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_UNIQUE_ID = 0x05
#: §2.2.5: "an opaque byte sequence of up to 128 bytes"
_UNIQUE_ID_MAX = 128

_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")
#: §2.1: exactly four decimal numbers, no heading zeroes ("to avoid any possible confusion
#: with octal numbers"); the 0..255 range is checked by ipaddress
_V1_IPV4 = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
#: hex groups and colons (a dotted IPv4 tail, as inet_ntop writes v4-mapped addresses, is
#: accepted); no zone index
_V1_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}")


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One received PROXY header."""

    #: 1 or 2
    version: int
    #: "PROXY" (use the addresses here) or "LOCAL" (v2 LOCAL, v1 UNKNOWN: use the real endpoints)
    command: str
    #: "TCP4", "TCP6", "UNIX" (v2 only: the addresses are socket paths, the ports None), or
    #: "UNSPEC" (with LOCAL)
    family: str
    src_addr: str | None
    src_port: int | None
    dst_addr: str | None
    dst_port: int | None
    #: v2 type-length-value vectors in the order sent (PROXY command only)
    tlvs: tuple[tuple[int, bytes], ...] = ()


_LOCAL_V1 = ProxyHeader(1, "LOCAL", "UNSPEC", None, None, None, None)


class ProxyParser:
    """Reads one PROXY header, v1 or v2, from the start of a connection.

    The outcome does not depend on how the stream was split: a malformed header raises as soon
    as enough bytes have arrived to show it (at the first byte when it starts neither
    signature), a valid one sets :attr:`header`, and everything after it, including bytes fed
    later, is kept in :attr:`remainder` for the SMTP codec.
    :raises ProtocolError: from :meth:`receive_data`, on anything but a valid header
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.header: ProxyHeader | None = None
        self.remainder = b""

    def receive_data(self, data: bytes) -> None:
        if self.header is not None:
            self.remainder += data
            return
        buf = self._buffer
        buf += data
        if buf[:1] == V1_PREFIX[:1]:
            found = _v1(buf)
        elif buf[:1] == V2_SIGNATURE[:1]:
            found = _v2(buf)
        elif buf:
            raise ProtocolError(f"not a PROXY protocol header: starts with {bytes(buf[:1])!r}")
        else:
            return
        if found is not None:
            self.header, used = found
            self.remainder = bytes(buf[used:])
            buf.clear()


def _v1(buf: bytearray) -> tuple[ProxyHeader, int] | None:
    """A v1 header and its length, None while incomplete. :raises ProtocolError:"""
    if not buf.startswith(V1_PREFIX[:len(buf)]):
        raise ProtocolError(f"not a PROXY v1 header: {bytes(buf[:len(V1_PREFIX)])!r}")
    window = buf[:V1_MAX_LINE]
    cr, lf = window.find(b"\r"), window.find(b"\n")
    if lf >= 0 and (cr < 0 or lf < cr):
        raise ProtocolError("PROXY v1 line ends in a bare LF")
    if cr < 0 or cr + 1 >= len(window):
        if len(window) >= V1_MAX_LINE:
            raise ProtocolError(f"PROXY v1 line without CRLF in its first {V1_MAX_LINE} bytes")
        return None
    if window[cr + 1] != 0x0A:
        raise ProtocolError("PROXY v1 line holds a bare CR")
    return _v1_line(bytes(window[:cr])), cr + 2


def _v1_line(line: bytes) -> ProxyHeader:
    fields = line.split(b" ")
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        # §2.1: for UNKNOWN "the receiver must ignore anything presented before the CRLF"
        return _LOCAL_V1
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProtocolError(f"malformed PROXY v1 line: {line[:60]!r}")
    try:
        text = [f.decode("ascii") for f in fields]
    except UnicodeDecodeError:
        raise ProtocolError("PROXY v1 line is not US-ASCII") from None
    family = text[1]
    src, dst = (_v1_address(family, a) for a in text[2:4])
    sport, dport = (_v1_port(p) for p in text[4:6])
    return ProxyHeader(1, "PROXY", family, src, sport, dst, dport)


def _v1_address(family: str, text: str) -> str:
    pattern, kind = (_V1_IPV4, ipaddress.IPv4Address) if family == "TCP4" else (_V1_IPV6, ipaddress.IPv6Address)
    if pattern.fullmatch(text):
        try:
            return str(kind(text))
        except ValueError:
            pass
    raise ProtocolError(f"PROXY v1 {family} address invalid: {text[:45]!r}")


def _v1_port(text: str) -> int:
    if not _V1_PORT.fullmatch(text) or int(text) > 65535:
        raise ProtocolError(f"PROXY v1 port invalid: {text[:10]!r}")
    return int(text)


def _v2(buf: bytearray) -> tuple[ProxyHeader, int] | None:
    """A v2 header and its length, None while incomplete. :raises ProtocolError:"""
    head = buf[:len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(head):
        raise ProtocolError("not a PROXY v2 signature")
    if len(buf) > 12 and buf[12] >> 4 != _V2_VERSION:
        raise ProtocolError(f"PROXY v2 header with version {buf[12] >> 4}")
    if len(buf) > 12 and buf[12] & 0x0F not in (_V2_LOCAL, _V2_PROXY):
        raise ProtocolError(f"PROXY v2 header with unassigned command {buf[12] & 0x0F}")
    if len(buf) > 13 and buf[13] not in _V2_FAMILIES:
        raise ProtocolError(f"PROXY v2 header with invalid family/transport 0x{buf[13]:02x}")
    if len(buf) < V2_FIXED:
        return None
    ver_cmd, fam, length = _HEAD.unpack_from(buf, 12)
    if length > V2_MAX_LENGTH:
        raise ProtocolError(f"PROXY v2 header length {length} above {V2_MAX_LENGTH}")
    total = V2_FIXED + length
    if len(buf) < total:
        return None
    if ver_cmd & 0x0F == _V2_LOCAL:
        # §2.2: "discard the protocol block including the family which is ignored"
        return ProxyHeader(2, "LOCAL", "UNSPEC", None, None, None, None), total
    return _v2_proxy(bytes(buf[:total]), fam), total


def _v2_proxy(header: bytes, fam: int) -> ProxyHeader:
    if fam not in _V2_ADDRESS_LENGTH:
        # §2.2 leaves the receiver free to refuse UNSPEC with PROXY; a datagram connection
        # cannot carry SMTP. Taking the real endpoints instead would attribute the mail to
        # the load balancer, which may well be on the allow list.
        raise ProtocolError(f"PROXY v2 PROXY command with family {_V2_FAMILIES[fam]}, not TCP4/TCP6/UNIX")
    block = header[V2_FIXED:]
    size = _V2_ADDRESS_LENGTH[fam]
    if len(block) < size:
        raise ProtocolError(f"PROXY v2 {_V2_FAMILIES[fam]} address block of {len(block)} bytes, not {size}")
    tlvs = _tlvs(block[size:])
    _check_crc32c(header, tlvs)
    family = _V2_FAMILIES[fam]
    if fam == 0x31:
        src_path, dst_path = (_unix_path(block[i:i + _V2_UNIX_PATH]) for i in (0, _V2_UNIX_PATH))
        return ProxyHeader(2, "PROXY", family, src_path, None, dst_path, None, tlvs)
    kind, layout = (ipaddress.IPv4Address, _V2_IPV4) if fam == 0x11 else (ipaddress.IPv6Address, _V2_IPV6)
    src, dst, sport, dport = layout.unpack_from(block)
    return ProxyHeader(2, "PROXY", family, str(kind(src)), sport, str(kind(dst)), dport, tlvs)


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """The TLVs filling ``data`` exactly; their number is bounded by :data:`V2_MAX_LENGTH`
    (each is at least 3 bytes). :raises ProtocolError:"""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _TLV.size:
            raise ProtocolError("PROXY v2 TLV cut short in its type/length")
        kind, length = _TLV.unpack_from(data, pos)
        pos += _TLV.size
        if len(data) - pos < length:
            raise ProtocolError(f"PROXY v2 TLV 0x{kind:02x} of {length} bytes overruns the header")
        value = data[pos:pos + length]
        pos += length
        if kind == PP2_TYPE_CRC32C and length != 4:
            raise ProtocolError(f"PROXY v2 CRC32C TLV of {length} bytes, not 4")
        if kind == PP2_TYPE_UNIQUE_ID and length > _UNIQUE_ID_MAX:
            raise ProtocolError(f"PROXY v2 UNIQUE_ID TLV of {length} bytes, above {_UNIQUE_ID_MAX}")
        out.append((kind, value))
    return tuple(out)


def _check_crc32c(header: bytes, tlvs: tuple[tuple[int, bytes], ...]) -> None:
    """§2.2.3: a receiver that supports the checksum MUST verify it, computed over the whole
    header with the checksum field zeroed. :raises ProtocolError:"""
    sums = [value for kind, value in tlvs if kind == PP2_TYPE_CRC32C]
    if not sums:
        return
    if len(sums) > 1:
        raise ProtocolError("PROXY v2 header with more than one CRC32C TLV")
    # the value's offset: walk the TLVs again (the same value may occur in the addresses)
    pos = len(header) - sum(_TLV.size + len(v) for _, v in tlvs)
    for kind, value in tlvs:
        pos += _TLV.size
        if kind == PP2_TYPE_CRC32C:
            break
        pos += len(value)
    zeroed = header[:pos] + b"\0\0\0\0" + header[pos + 4:]
    if crc32c(zeroed) != int.from_bytes(sums[0], "big"):
        raise ProtocolError("PROXY v2 header fails its CRC32C checksum")


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected (RFC 4960 App. B)
        table.append(c)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli) of ``data``, as RFC 4960 Appendix B defines it."""
    c = 0xFFFFFFFF
    for byte in data:
        c = _CRC32C[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _endpoints(src_addr: str, dst_addr: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    src, dst = ipaddress.ip_address(src_addr), ipaddress.ip_address(dst_addr)
    if src.version != dst.version:
        raise ValueError(f"PROXY addresses of two families: {src_addr} and {dst_addr}")
    return src, dst


def _check_ports(*ports: int) -> None:
    for port in ports:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range 0..65535")


def encode_v1(src_addr: str, src_port: int, dst_addr: str, dst_port: int) -> bytes:
    """A v1 line, TCP4 or TCP6 by the addresses' family.

    :raises ValueError: on an invalid address, two families, or a port outside 0..65535
    """
    src, dst = _endpoints(src_addr, dst_addr)
    _check_ports(src_port, dst_port)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {src_port} {dst_port}\r\n".encode("ascii")


def encode_v2(src_addr: str, src_port: int, dst_addr: str, dst_port: int, *,
              tlvs: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """A v2 header with the PROXY command, TCP4 or TCP6 by the addresses' family.

    :param tlvs: TLVs to append, as (type, value)
    :raises ValueError: on an invalid address, two families, a port outside 0..65535, or a
        header longer than :data:`V2_MAX_LENGTH`
    """
    src, dst = _endpoints(src_addr, dst_addr)
    _check_ports(src_port, dst_port)
    fam, layout = (0x11, _V2_IPV4) if src.version == 4 else (0x21, _V2_IPV6)
    block = layout.pack(src.packed, dst.packed, src_port, dst_port) + _encode_tlvs(tlvs)
    return _v2_header(_V2_PROXY, fam, block)


def encode_v2_local(*, tlvs: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """A v2 header with the LOCAL command (what a proxy sends on its own health checks)."""
    return _v2_header(_V2_LOCAL, 0x00, _encode_tlvs(tlvs))


def _encode_tlvs(tlvs: tuple[tuple[int, bytes], ...]) -> bytes:
    out = bytearray()
    for kind, value in tlvs:
        if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
            raise ValueError(f"TLV 0x{kind:x} of {len(value)} bytes cannot be encoded")
        out += _TLV.pack(kind, len(value)) + value
    return bytes(out)


def _v2_header(command: int, fam: int, block: bytes) -> bytes:
    if len(block) > V2_MAX_LENGTH:
        raise ValueError(f"PROXY v2 header length {len(block)} above {V2_MAX_LENGTH}")
    return V2_SIGNATURE + _HEAD.pack(_V2_VERSION << 4 | command, fam, len(block)) + block
