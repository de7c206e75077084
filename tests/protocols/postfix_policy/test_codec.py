"""The policy codec: golden bytes, limits, and any byte stream split anywhere."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.errors import ProtocolError
from tests.conftest import split
from checkid.protocols.postfix_policy import codec
from checkid.protocols.postfix_policy.codec import RequestParser

GOLDEN = (Path(__file__).parents[2] / "data" / "postfix37_rcpt_request.txt").read_bytes()


def parse_all(chunks, eof=False):
    parser = RequestParser()
    out = []
    for chunk in chunks:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not None:
            out.append(event)
    if eof:
        parser.receive_eof()
        while (event := parser.next_event()) is not None:
            out.append(event)
    return out


def test_parses_every_attribute_postfix_sends():
    (request,) = parse_all([GOLDEN])
    assert request["request"] == "smtpd_access_policy"
    assert request["client_address"] == "192.0.2.1" and request["instance"] == "4a2b.6571d1b0.8c0d2.0"
    assert request["queue_id"] == "" and request["mail_version"] == "3.8.1"
    assert len(request) == GOLDEN.count(b"\n") - 1


def test_pipelined_requests_come_out_in_order_and_blank_lines_between_are_skipped():
    a, b = b"request=smtpd_access_policy\nn=1\n\n", b"request=smtpd_access_policy\nn=2\r\n\r\n"
    assert [r["n"] for r in parse_all([a + b"\n\n" + b])] == ["1", "2"]


def test_last_value_of_a_repeated_attribute_wins_and_values_may_hold_equals():
    (request,) = parse_all([b"sender=a@x\nsender=b=c@x\n\n"])
    assert request == {"sender": "b=c@x"}


def test_eof_completes_a_request_without_its_empty_line():
    assert parse_all([b"request=smtpd_access_policy\nclient_address=192.0.2.1"], eof=True) == [
        {"request": "smtpd_access_policy", "client_address": "192.0.2.1"}]


@pytest.mark.parametrize("data, message", [
    (b"no equals sign\n\n", "not name=value"),
    (b"=value\n\n", "not name=value"),
    (b"name=va\0lue\n\n", "NUL"),
    (b"x=" + b"y" * (codec.MAX_LINE + 1) + b"\n\n", "longer than"),
    (b"".join(b"a%d=1\n" % i for i in range(codec.MAX_ATTRIBUTES + 1)) + b"\n", "more than"),
    (b"".join(b"a%d=%s\n" % (i % 50, b"v" * 5000) for i in range(20)), "larger than"),
    (b"x=" + b"y" * codec.MAX_REQUEST, "larger than"),
])
def test_limits_and_malformed_lines_are_refused(data, message):
    with pytest.raises(ProtocolError, match=message):
        parse_all([data])


def test_reply_encoding():
    assert codec.encode_reply("550 5.7.1 no") == b"action=550 5.7.1 no\n\n"
    assert codec.parse_reply(b"action=DUNNO\n\n") == "DUNNO"
    with pytest.raises(ValueError):
        codec.encode_reply("PREPEND X: a\nY: b")


names = st.text(st.characters(blacklist_characters="=\n\0\r", blacklist_categories=("Cs",)), min_size=1, max_size=20)
# a CR inside a value is data; one right before the LF is part of a CRLF line end
values = st.text(st.characters(blacklist_characters="\n\0", blacklist_categories=("Cs",)), max_size=40).filter(
    lambda v: not v.endswith("\r"))

requests = st.dictionaries(names, values, min_size=1, max_size=8)


@given(st.lists(requests, max_size=5), st.lists(st.integers(0, 10_000), max_size=10))
def test_round_trip_split_anywhere(reqs, cuts):
    data = b"".join(codec.encode_request(r) for r in reqs)
    assert parse_all(split(data, cuts)) == reqs


@given(st.binary(max_size=400), st.lists(st.integers(0, 10_000), max_size=10))
def test_any_bytes_split_anywhere_parse_the_same_or_are_refused(data, cuts):
    def outcome(chunks):
        try:
            return parse_all(chunks)
        except ProtocolError:
            return "refused"
    assert outcome(split(data, cuts)) == outcome([data])


@given(st.lists(requests, max_size=4), st.lists(st.integers(0, 10_000), max_size=10))
def test_crlf_line_ends_split_anywhere(reqs, cuts):
    data = b"".join(codec.encode_request(r) for r in reqs).replace(b"\n", b"\r\n")
    assert parse_all(split(data, cuts)) == reqs
