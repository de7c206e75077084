"""The PROXY protocol codec: v1 and v2 headers round-tripped, split anywhere, and every
receiver rule of haproxy doc/proxy-protocol.txt refused in its own test."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.errors import ProtocolError
from checkid.protocols.smtp import proxyproto
from checkid.protocols.smtp.proxyproto import ProxyHeader, ProxyParser
from tests.conftest import split

SIG = b"\r\n\r\n\x00\r\nQUIT\n"  # the spec's signature, §2.2, spelled out here on purpose
SMTP = b"EHLO client.example\r\n"

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
endpoints = st.one_of(st.tuples(v4, ports, v4, ports), st.tuples(v6, ports, v6, ports))


def parse(*chunks: bytes) -> ProxyParser:
    parser = ProxyParser()
    for chunk in chunks:
        parser.receive_data(chunk)
    return parser


def refused(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse(data)


def v2(ver_cmd: int, fam: int, block: bytes) -> bytes:
    """A v2 header built by hand from the spec's struct proxy_hdr_v2."""
    return SIG + bytes([ver_cmd, fam]) + struct.pack("!H", len(block)) + block


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


V4_BLOCK = bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 40000, 25)


# --- what comes in ---------------------------------------------------------------------------

def test_v1_tcp4_header_gives_its_endpoints_and_keeps_the_smtp_stream():
    parser = parse(b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 25\r\n" + SMTP)
    assert parser.header == ProxyHeader(1, "PROXY", "TCP4", "192.0.2.1", 40000, "198.51.100.7", 25)
    assert parser.remainder == SMTP


def test_v1_tcp6_header_gives_canonical_addresses():
    parser = parse(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 2001:db8::ff 65535 0\r\n")
    assert parser.header == ProxyHeader(1, "PROXY", "TCP6", "2001:db8::1", 65535, "2001:db8::ff", 0)


def test_v1_unknown_means_the_real_endpoints_whatever_follows_it():
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff:: ffff:: 65535 65535\r\n"):
        parser = parse(line + SMTP)
        assert parser.header == ProxyHeader(1, "LOCAL", "UNSPEC", None, None, None, None)
        assert parser.remainder == SMTP


def test_v1_longest_line_of_107_bytes_is_taken():
    full = "ffff:" * 7 + "ffff"
    line = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(line) == 107
    assert parse(line).header is not None


def test_v2_tcp4_header_built_by_hand():
    parser = parse(v2(0x21, 0x11, V4_BLOCK) + SMTP)
    assert parser.header == ProxyHeader(2, "PROXY", "TCP4", "192.0.2.1", 40000, "198.51.100.7", 25)
    assert parser.remainder == SMTP


def test_v2_tcp6_header_built_by_hand():
    src, dst = ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8::2")
    parser = parse(v2(0x21, 0x21, src.packed + dst.packed + struct.pack("!HH", 1, 587)))
    assert parser.header == ProxyHeader(2, "PROXY", "TCP6", "2001:db8::1", 1, "2001:db8::2", 587)


def test_v2_unix_header_gives_the_socket_paths():
    block = b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")
    assert parse(v2(0x21, 0x31, block)).header == ProxyHeader(2, "PROXY", "UNIX", "/run/a.sock", None,
                                                             "/run/b.sock", None)


def test_v2_local_health_check_means_the_real_endpoints_and_skips_its_block():
    # "must not assume zero is presented for LOCAL connections": the length is honoured
    parser = parse(v2(0x20, 0x11, V4_BLOCK + tlv(0x04, b"pad")) + SMTP)
    assert parser.header == ProxyHeader(2, "LOCAL", "UNSPEC", None, None, None, None)
    assert parser.remainder == SMTP
    assert parse(proxyproto.encode_v2_local()).header == parser.header


def test_v2_tlvs_are_kept_in_order():
    tlvs = tlv(0x02, b"mx.example") + tlv(0x05, b"u" * 128) + tlv(0x04, b"") + tlv(0xEA, b"vpce-0123")
    header = parse(v2(0x21, 0x11, V4_BLOCK + tlvs)).header
    assert header is not None
    assert header.tlvs == ((0x02, b"mx.example"), (0x05, b"u" * 128), (0x04, b""), (0xEA, b"vpce-0123"))


def test_crc32c_matches_the_standard_check_value():
    assert proxyproto.crc32c(b"123456789") == 0xE3069283  # the published check value of CRC-32/ISCSI


def test_v2_header_with_a_correct_crc32c_is_taken():
    unsigned = v2(0x21, 0x11, V4_BLOCK + tlv(0x03, b"\0\0\0\0") + tlv(0x02, b"mx.example"))
    signed = unsigned.replace(b"\x03\x00\x04\0\0\0\0", b"\x03\x00\x04" + struct.pack("!I", proxyproto.crc32c(unsigned)))
    header = parse(signed).header
    assert header is not None and header.tlvs[1] == (0x02, b"mx.example")


def test_more_data_after_the_header_goes_to_the_remainder():
    parser = parse(b"PROXY UNKNOWN\r\nEHLO", b" x\r\n", b"MAIL FROM:<>\r\n")
    assert parser.remainder == b"EHLO x\r\nMAIL FROM:<>\r\n"


def test_an_incomplete_header_is_waited_for_never_taken_as_absent():
    for data in (b"", b"P", b"PROXY TCP4 192.0.2.1", SIG[:5], SIG, v2(0x21, 0x11, V4_BLOCK)[:-1]):
        parser = parse(data)
        assert parser.header is None and parser.remainder == b""


# --- what is refused: one rule each ----------------------------------------------------------

@pytest.mark.parametrize("first", [b"E", b"H", b"\x16", b"\0", b"p", b"\n"])
def test_first_byte_that_starts_neither_signature_is_refused_at_once(first):
    refused(first, "not a PROXY protocol header")


def test_v1_prefix_mismatch_is_refused_before_the_line_ends():
    refused(b"PROXX", "not a PROXY v1 header")
    refused(b"PROXY\t", "not a PROXY v1 header")


def test_v2_signature_mismatch_is_refused_before_the_header_ends():
    refused(SIG[:6] + b"X", "not a PROXY v2 signature")


def test_v1_line_over_107_bytes_without_crlf_is_refused():
    refused(b"PROXY UNKNOWN " + b"f" * 93, "without CRLF in its first 107")
    refused(b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n", "without CRLF in its first 107")


def test_v1_bare_lf_is_refused():
    refused(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n", "bare LF")
    refused(b"PROXY UNKNOWN\n", "bare LF")


def test_v1_bare_cr_is_refused():
    refused(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\rX", "bare CR")
    refused(b"PROXY UNKNOWN\r\r\n", "bare CR")


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",                   # a field missing
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n",               # a field too many
    b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",                # two spaces
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n",                # a trailing space
    b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n",                 # not TCP4/TCP6/UNKNOWN
    b"PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n",                 # case counts
    b"PROXY \r\n",
])
def test_v1_line_not_in_the_exact_format_is_refused(line):
    refused(line, "malformed PROXY v1 line")


@pytest.mark.parametrize("address", ["192.0.2.01", "192.000.2.1", "0192.0.2.1"])
def test_v1_address_with_leading_zeros_is_refused(address):
    refused(f"PROXY TCP4 {address} 192.0.2.2 1 2\r\n".encode(), "TCP4 address invalid")


@pytest.mark.parametrize("address", ["192.0.2.256", "192.0.2", "192.0.2.1.5", "::1", "a.b.c.d", "+1.2.3.4"])
def test_v1_tcp4_address_not_ipv4_is_refused(address):
    refused(f"PROXY TCP4 {address} 192.0.2.2 1 2\r\n".encode(), "TCP4 address invalid")


@pytest.mark.parametrize("address", ["192.0.2.1", "2001:db8::1::2", "fe80::1%eth0", "2001:db8:::1", "12345::1"])
def test_v1_tcp6_address_not_ipv6_is_refused(address):
    refused(f"PROXY TCP6 {address} ::1 1 2\r\n".encode(), "TCP6 address invalid")


@pytest.mark.parametrize("port", ["65536", "01", "00", "-1", "+1", "1e3", "99999"])
def test_v1_port_out_of_range_or_with_leading_zeros_is_refused(port):
    refused(f"PROXY TCP4 192.0.2.1 192.0.2.2 {port} 25\r\n".encode(), "port invalid")


def test_v1_non_ascii_line_is_refused():
    refused("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\u00e9\r\n".encode(), "not US-ASCII")


@pytest.mark.parametrize("version", [0x0, 0x1, 0x3, 0xF])
def test_v2_version_other_than_2_is_refused(version):
    refused(SIG + bytes([version << 4 | 1]), "version")


@pytest.mark.parametrize("command", [0x2, 0x3, 0xF])
def test_v2_unassigned_command_is_refused(command):
    refused(SIG + bytes([0x20 | command]), "unassigned command")


@pytest.mark.parametrize("fam", [0x01, 0x10, 0x13, 0x41, 0xFF])
def test_v2_invalid_family_byte_is_refused_even_with_local(fam):
    refused(SIG + bytes([0x21, fam]), "invalid family")
    refused(SIG + bytes([0x20, fam]), "invalid family")


def test_v2_length_above_the_bound_is_refused_without_waiting_for_the_bytes():
    refused(SIG + bytes([0x21, 0x11]) + struct.pack("!H", proxyproto.V2_MAX_LENGTH + 1), "above")
    assert parse(v2(0x21, 0x11, V4_BLOCK + tlv(0x04, b"\0" * (proxyproto.V2_MAX_LENGTH - 15)))).header


@pytest.mark.parametrize("fam, size", [(0x11, 12), (0x21, 36), (0x31, 216)])
def test_v2_address_block_shorter_than_its_family_is_refused(fam, size):
    refused(v2(0x21, fam, b"\0" * (size - 1)), "address block")


@pytest.mark.parametrize("fam", [0x00, 0x12, 0x22, 0x32])
def test_v2_proxy_command_with_unspec_or_datagram_family_is_refused(fam):
    refused(v2(0x21, fam, b"\0" * 36), "not TCP4/TCP6/UNIX")


def test_v2_tlv_cut_in_its_type_and_length_is_refused():
    refused(v2(0x21, 0x11, V4_BLOCK + b"\x04\x00"), "cut short")


def test_v2_tlv_overrunning_the_header_is_refused():
    refused(v2(0x21, 0x11, V4_BLOCK + b"\x02\x00\x05abc"), "overruns")


def test_v2_crc32c_tlv_not_of_4_bytes_is_refused():
    refused(v2(0x21, 0x11, V4_BLOCK + tlv(0x03, b"\0\0\0")), "CRC32C TLV of 3")


def test_v2_unique_id_over_128_bytes_is_refused():
    refused(v2(0x21, 0x11, V4_BLOCK + tlv(0x05, b"u" * 129)), "UNIQUE_ID")


def test_v2_wrong_crc32c_is_refused():
    refused(v2(0x21, 0x11, V4_BLOCK + tlv(0x03, b"\0\0\0\1")), "fails its CRC32C")


def test_v2_two_crc32c_tlvs_are_refused():
    refused(v2(0x21, 0x11, V4_BLOCK + tlv(0x03, b"\0\0\0\0") * 2), "more than one CRC32C")


# --- encoders ---------------------------------------------------------------------------------

def test_encoders_refuse_what_no_header_can_say():
    with pytest.raises(ValueError, match="two families"):
        proxyproto.encode_v1("192.0.2.1", 1, "::1", 2)
    with pytest.raises(ValueError, match="out of range"):
        proxyproto.encode_v2("192.0.2.1", 65536, "192.0.2.2", 2)
    with pytest.raises(ValueError):
        proxyproto.encode_v1("mx.example", 1, "192.0.2.2", 2)
    with pytest.raises(ValueError, match="above"):
        proxyproto.encode_v2("192.0.2.1", 1, "192.0.2.2", 2, tlvs=((0x04, b"\0" * proxyproto.V2_MAX_LENGTH),))


def test_encode_v1_is_the_spec_example_line():
    assert proxyproto.encode_v1("192.168.0.1", 56324, "192.168.0.11", 443) == \
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"  # §2.1's example


def test_encode_v2_is_the_spec_layout():
    assert proxyproto.encode_v2("192.0.2.1", 40000, "198.51.100.7", 25) == v2(0x21, 0x11, V4_BLOCK)


# --- properties -------------------------------------------------------------------------------

def _same_endpoints(header: ProxyHeader | None, src: str, sport: int, dst: str, dport: int) -> None:
    assert header is not None and header.command == "PROXY"
    assert header.family == ("TCP4" if ipaddress.ip_address(src).version == 4 else "TCP6")
    assert ipaddress.ip_address(header.src_addr or "") == ipaddress.ip_address(src)
    assert ipaddress.ip_address(header.dst_addr or "") == ipaddress.ip_address(dst)
    assert (header.src_port, header.dst_port) == (sport, dport)


@given(endpoints)
def test_v1_round_trip(ends):
    header = parse(proxyproto.encode_v1(*ends)).header
    _same_endpoints(header, *ends)
    assert header is not None and header.version == 1


@given(endpoints, st.lists(st.tuples(st.sampled_from([0x01, 0x02, 0x04, 0x20, 0x30, 0xE0]), st.binary(max_size=40)),
                           max_size=4))
def test_v2_round_trip(ends, tlvs):
    header = parse(proxyproto.encode_v2(*ends, tlvs=tuple(tlvs))).header
    _same_endpoints(header, *ends)
    assert header is not None and header.version == 2 and header.tlvs == tuple(tlvs)


headers = st.one_of(endpoints.map(lambda e: proxyproto.encode_v1(*e)),
                    endpoints.map(lambda e: proxyproto.encode_v2(*e, tlvs=((0x02, b"mx.example"),))),
                    st.just(b"PROXY UNKNOWN\r\n"), st.just(proxyproto.encode_v2_local()))


@given(headers, st.binary(max_size=64), st.lists(st.integers(0, 200), max_size=8))
def test_split_anywhere_gives_the_same_header_and_remainder(header_bytes, rest, cuts):
    whole = parse(header_bytes + rest)
    parts = parse(*split(header_bytes + rest, cuts))
    assert whole.header is not None
    assert parts.header == whole.header
    assert parts.remainder == whole.remainder == rest


def _outcome(chunks: list[bytes]) -> tuple[str, object]:
    try:
        parser = parse(*chunks)
    except ProtocolError:
        return "refused", None
    return "taken", (parser.header, parser.remainder)


@given(headers, st.integers(0, 120), st.integers(0, 255), st.lists(st.integers(0, 200), max_size=8))
def test_split_anywhere_gives_the_same_verdict_on_a_damaged_header(header_bytes, at, byte, cuts):
    data = bytearray(header_bytes + SMTP)
    data[at % len(data)] = byte
    assert _outcome(split(bytes(data), cuts)) == _outcome([bytes(data)])


@given(st.binary(max_size=200), st.lists(st.integers(0, 250), max_size=8))
def test_split_anywhere_gives_the_same_verdict_on_any_bytes(data, cuts):
    assert _outcome(split(data, cuts)) == _outcome([data])
