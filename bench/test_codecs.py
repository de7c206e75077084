"""Codec cost per request (pytest-benchmark), beside the bare minimum measured in the same run.

Run: ``sh bench/micro``. References: for the policy protocol, splitting the same request
into a dict with ``bytes.split`` and nothing else; for MessagePack-RPC, ``msgpack.unpackb`` /
``msgpack.packb`` alone. The ratio is what the codec's checks and bookkeeping cost.
"""
from __future__ import annotations

from pathlib import Path

import msgpack

from checkid.protocols.msgpack_rpc import codec as rpc
from checkid.protocols.postfix_policy import codec as pol

BATCH = 1000
REQUEST = (Path(__file__).resolve().parent.parent / "tests" / "data" / "postfix37_rcpt_request.txt").read_bytes()
RPC_REQUEST = rpc.encode_request(7, "checkID", ["192.0.2.1", "example.com", "mx.example.com", "a@example.com",
                                                ["b@example.org"], [], None])
RESULT = ["ACCEPT", [250, "", "Sender OK"],
          [{"label": "Authent:", "text": "192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"}]]


def _per_request(benchmark, fn):
    benchmark.extra_info["batch"] = BATCH
    benchmark(lambda: [fn() for _ in range(BATCH)])


def test_policy_decode_request(benchmark):
    p = pol.RequestParser()  # one parser per connection, as in the server

    def one():
        p.receive_data(REQUEST)
        return p.next_event()
    assert one()["client_address"] == "192.0.2.1"
    _per_request(benchmark, one)


def test_reference_policy_split_only(benchmark):
    def one():
        return dict(line.split(b"=", 1) for line in REQUEST.split(b"\n") if line)
    assert one()[b"client_address"] == b"192.0.2.1"
    _per_request(benchmark, one)


ACTION = "PREPEND Authent: 192.0.2.1 example.com SPF1 PASS ratings=S1:A"


def test_policy_encode_reply(benchmark):
    _per_request(benchmark, lambda: pol.encode_reply(ACTION))


def test_reference_policy_concat_only(benchmark):
    _per_request(benchmark, lambda: b"action=" + ACTION.encode() + b"\n\n")


def test_rpc_decode_request(benchmark):
    p = rpc.RpcParser()  # one parser per connection, as in the server

    def one():
        p.receive_data(RPC_REQUEST)
        return p.next_event()
    assert one().method == "checkID"
    _per_request(benchmark, one)


def test_reference_msgpack_unpackb_only(benchmark):
    _per_request(benchmark, lambda: msgpack.unpackb(RPC_REQUEST))


def test_rpc_encode_response(benchmark):
    _per_request(benchmark, lambda: rpc.encode_response(7, None, RESULT))


def test_reference_msgpack_packb_only(benchmark):
    _per_request(benchmark, lambda: msgpack.packb([1, 7, None, RESULT]))
