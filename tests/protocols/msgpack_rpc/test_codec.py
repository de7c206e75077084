"""The MessagePack-RPC codec: events, malformed input, and streams split anywhere."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.errors import ProtocolError
from tests.conftest import split
from checkid.protocols.msgpack_rpc import codec
from checkid.protocols.msgpack_rpc.codec import (BadRequest, MessageTooLarge, Notification, Request, Response,
                                                 RpcParser)


def events(chunks, parser=None):
    parser = parser or RpcParser()
    out = []
    for chunk in chunks:
        parser.receive_data(chunk)
        while (e := parser.next_event()) is not None:
            out.append(e)
    return out


def test_request_notification_response():
    data = (codec.encode_request(7, "checkID", ["192.0.2.1", "example.com"])
            + codec.encode_notification("ping", []) + codec.encode_response(7, None, ["ACCEPT"]))
    assert events([data]) == [Request(7, "checkID", ["192.0.2.1", "example.com"]), Notification("ping", []),
                              Response(7, None, ["ACCEPT"])]


@pytest.mark.parametrize("obj, expected", [
    ([0, 1, 5, []], BadRequest(1, "method name must be a string, got 5")),
    ([0, 2, "ping", {"a": 1}], BadRequest(2, "params must be an array, got {'a': 1}")),
])
def test_answerable_bad_requests(obj, expected):
    assert events([msgpack.packb(obj)]) == [expected]


@pytest.mark.parametrize("data", [
    msgpack.packb({"not": "a list"}), msgpack.packb([9, 1, "x", []]), msgpack.packb([0, -1, "x", []]),
    msgpack.packb([0, "id", "x", []]), msgpack.packb([2, "x"]), msgpack.packb([]), b"\xc1",
])
def test_unanswerable_input_is_a_protocol_error(data):
    with pytest.raises(ProtocolError):
        events([data])


def test_oversize_message_is_refused_with_its_msgid():
    parser = RpcParser(max_message=1000)
    with pytest.raises(MessageTooLarge) as err:
        events([codec.encode_request(42, "checkID", ["192.0.2.1", None, None, None, [], [], "x" * 5000])], parser)
    assert err.value.msgid == 42


def test_oversize_message_arriving_in_pieces_is_refused_with_its_msgid():
    parser = RpcParser(max_message=1000)
    data = codec.encode_request(43, "checkID", ["192.0.2.1", None, None, None, [], [], "x" * 5000])
    with pytest.raises(MessageTooLarge) as err:
        events([codec.encode_request(1, "ping", [])] + [data[i:i + 7] for i in range(0, len(data), 7)], parser)
    assert err.value.msgid == 43


messages = st.one_of(
    st.builds(lambda i, m, p: codec.encode_request(i, m, p), st.integers(0, 2**32 - 1), st.text(max_size=10),
              st.lists(st.one_of(st.none(), st.text(max_size=20), st.integers(-2**63, 2**64 - 1), st.binary(max_size=20)),
                       max_size=7)),
    st.builds(lambda m, p: codec.encode_notification(m, p), st.text(max_size=10), st.lists(st.integers(-2**63, 2**64 - 1), max_size=3)),
    st.builds(lambda i, e, r: codec.encode_response(i, e, r), st.integers(0, 2**32 - 1),
              st.one_of(st.none(), st.text(max_size=10)), st.lists(st.text(max_size=10), max_size=3)),
)


@given(st.lists(messages, max_size=6), st.lists(st.integers(0, 10_000), max_size=10))
def test_round_trip_split_anywhere(msgs, cuts):
    data = b"".join(msgs)
    expected = events([data])
    assert len(expected) == len(msgs)
    assert events(split(data, cuts)) == expected
    for event, raw in zip(expected, msgs):
        if isinstance(event, Request):
            assert codec.encode_request(event.msgid, event.method, event.params) == raw


@given(st.binary(max_size=300), st.lists(st.integers(0, 10_000), max_size=10))
def test_any_bytes_give_events_or_a_protocol_error(data, cuts):
    def outcome(chunks):
        try:
            return events(chunks)
        except ProtocolError:
            return "refused"
    assert outcome(split(data, cuts)) == outcome([data])


# -- nesting (issue 14) -------------------------------------------------------------------------
from checkid.protocols.msgpack_rpc.codec import MAX_DEPTH, MessageTooDeep  # noqa: E402


def nested(depth, leaf=None):
    obj = leaf
    for _ in range(depth):
        obj = [obj]
    return obj


@pytest.mark.parametrize("depth", [MAX_DEPTH, 1000, 1023])
def test_deep_nesting_is_refused_with_its_msgid_and_without_recursion(depth):
    with pytest.raises(MessageTooDeep) as err:
        events([msgpack.packb([0, 11, "checkID", nested(depth)])])  # params one level more: past the bound
    assert err.value.msgid == 11 and err.value.limit == "nesting"


def test_deep_nesting_in_a_map_or_outside_a_request_has_no_msgid():
    with pytest.raises(MessageTooDeep) as err:
        events([msgpack.packb({"a": nested(1000)})])
    assert err.value.msgid is None
    with pytest.raises(MessageTooDeep):
        events([msgpack.packb([2, "ping", [{"x": nested(MAX_DEPTH)}]])])


def test_the_deepest_valid_call_is_accepted():
    call = [0, 3, "checkID", [{"IP": "192.0.2.1", "Hdrs": [["From", "a@example.com"]]}]]
    assert events([msgpack.packb(call)]) == [Request(3, "checkID", call[3])]
    assert events([msgpack.packb([0, 4, "x", nested(MAX_DEPTH - 1)])])[0].msgid == 4  # exactly at the bound
