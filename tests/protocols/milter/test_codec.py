"""The milter codec: golden packets, every command and response round-tripped, any bytes
split anywhere."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.errors import ProtocolError
from checkid.protocols.milter import codec
from checkid.protocols.milter.events import (DISPOSITION_CODES, Abort, AddHeader, AddRecipient, Body, ChangeFrom,
                                             ChangeHeader, Connect, Data, DeleteRecipient, Disposition, EndOfHeaders,
                                             EndOfMessage, HeaderField, Helo, InsertHeader, Macro, Mail, OptNeg,
                                             OptNegReply, Quarantine, Quit, QuitNoClose, Rcpt, ReplaceBody,
                                             ReplyCode, Unknown)
from tests.conftest import split


def commands(chunks):
    parser = codec.CommandParser()
    out = []
    for chunk in chunks:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not None:
            out.append(event)
    return out


def test_golden_postfix_optneg_and_coalesced_macro_plus_connect():
    optneg = bytes.fromhex("0000000d4f00000006000001ff001fffff")  # Postfix 3.7.11 (reference §1)
    macro = codec.frame(b"D", b"Cj\x00mx.example\x00{client_addr}\x00192.0.2.1\x00")
    connect = codec.frame(b"C", b"mail.example.com\0" + b"4" + (25).to_bytes(2, "big") + b"192.0.2.1\x00")
    assert commands([optneg + macro + connect]) == [
        OptNeg(6, 0x1FF, 0x1FFFFF),
        Macro(b"C", (("j", "mx.example"), ("{client_addr}", "192.0.2.1"))),
        Connect("mail.example.com", "4", 25, "192.0.2.1"),
    ]


def test_connect_families_and_empty_macro_packets():
    unknown = codec.frame(b"C", b"localhost\0U")
    v6 = codec.frame(b"C", b"[IPv6:0:0:0:0:0:0:0:1]\0" + b"6" + (2626).to_bytes(2, "big") + b"IPv6:0:0:0:0:0:0:0:1\0")
    local = codec.frame(b"C", b"localhost\0L\0\0/run/x.sock\0")
    assert commands([unknown + v6 + local + codec.frame(b"D", b"H")]) == [
        Connect("localhost", "U"), Connect("[IPv6:0:0:0:0:0:0:0:1]", "6", 2626, "IPv6:0:0:0:0:0:0:0:1"),
        Connect("localhost", "L", 0, "/run/x.sock"), Macro(b"H", ()),
    ]


@pytest.mark.parametrize("data, message", [
    (b"\0\0\0\0", "out of range"),
    ((codec.MAX_PACKET + 1).to_bytes(4, "big"), "out of range"),
    (codec.frame(b"Z"), "unknown milter command"),
    (codec.frame(b"O", b"\0\0\0\6"), "shorter than 12"),
    (codec.frame(b"H", b"no-nul"), "not NUL-terminated"),
    (codec.frame(b"L", b"only-name\0"), "not name and value"),
    (codec.frame(b"M", b""), "without an address"),
    (codec.frame(b"C", b"host\0"), "without hostname and family"),
    (codec.frame(b"C", b"host\0" + b"4" + b"\0"), "without port and address"),
])
def test_malformed_packets_are_protocol_errors(data, message):
    with pytest.raises(ProtocolError, match=message):
        commands([data])


def test_a_large_header_packet_is_accepted():
    value = "x" * 200_000  # Postfix sends headers up to header_size_limit in one packet
    assert commands([codec.encode_command(HeaderField("X-Big", value))]) == [HeaderField("X-Big", value)]


text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30)
address = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
command_events = st.one_of(
    st.builds(OptNeg, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(Macro, st.sampled_from([b"C", b"H", b"M", b"R", b"T", b"L", b"N", b"B", b"E", b"U"]),
              st.lists(st.tuples(text.filter(bool), text), max_size=4).map(tuple)),
    st.builds(Connect, text, st.sampled_from(["4", "6", "L"]), st.integers(0, 65535), address),
    st.builds(Connect, text, st.just("U")),
    st.builds(Helo, text), st.builds(Unknown, text),
    st.builds(Mail, st.lists(text, min_size=1, max_size=4).map(tuple)),
    st.builds(Rcpt, st.lists(text, min_size=1, max_size=4).map(tuple)),
    st.builds(HeaderField, text, text), st.builds(Body, st.binary(max_size=100)),
    st.builds(EndOfMessage, st.binary(max_size=10)),
    st.sampled_from([Data(), EndOfHeaders(), Abort(), Quit(), QuitNoClose()]),
)
response_events = st.one_of(
    st.builds(OptNegReply, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
              st.lists(st.tuples(st.integers(0, 6), text.filter(bool)), max_size=3).map(tuple)),
    st.sampled_from([Disposition(c) for c in DISPOSITION_CODES]),
    st.builds(ReplyCode, text), st.builds(InsertHeader, st.integers(0, 2**32 - 1), text, text),
    st.builds(AddHeader, text, text), st.builds(Quarantine, text),
    st.builds(ChangeHeader, st.integers(0, 2**32 - 1), text, text),
    st.builds(AddRecipient, text, st.one_of(st.none(), text)), st.builds(DeleteRecipient, text),
    st.builds(ChangeFrom, text, st.one_of(st.none(), text)), st.builds(ReplaceBody, st.binary(max_size=50)),
)


@given(st.lists(command_events, max_size=8), st.lists(st.integers(0, 10_000), max_size=10))
def test_commands_round_trip_split_anywhere(events, cuts):
    data = b"".join(codec.encode_command(e) for e in events)
    assert commands(split(data, cuts)) == events


@given(st.lists(response_events, max_size=8), st.lists(st.integers(0, 10_000), max_size=10))
def test_responses_round_trip_split_anywhere(events, cuts):
    parser = codec.ResponseParser()
    out = []
    for chunk in split(b"".join(codec.encode_response(e) for e in events), cuts):
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not None:
            out.append(event)
    assert out == events


@given(st.binary(max_size=300), st.lists(st.integers(0, 10_000), max_size=10))
def test_any_bytes_give_commands_or_a_protocol_error(data, cuts):
    def outcome(chunks):
        try:
            return commands(chunks)
        except ProtocolError:
            return "refused"
    assert outcome(split(data, cuts)) == outcome([data])
