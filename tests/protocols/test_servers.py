"""The policy and MessagePack-RPC front-ends over real loopback sockets, against in-process
decisions (the worker's wiring: one ServerState, stats from engine and front-end counters)."""
from __future__ import annotations

import asyncio

import msgpack
import pytest

from checkid.config import ListenConfig
from checkid.engine.decision import Envelope
from checkid.engine.engine import Engine
from checkid.protocols.base import ServerState
from checkid.protocols.registry import protocol_factory
from checkid.protocols.msgpack_rpc import codec as rpc
from checkid.protocols.msgpack_rpc.client import AsyncClient, CallFailed, Client
from checkid.protocols.postfix_policy import codec as pol
from checkid.protocols.postfix_policy.replies import render
from tests.conftest import base_config, run

CASES = [("192.0.2.1", "example.com"), ("192.0.2.1", "example.net"), ("203.0.113.10", "example.com"),
         ("192.0.2.217", "helo.example"), ("192.0.2.1", "unregistered.example"), ("bad ip", "example.com")]


class FirstLast:
    """The engine, except that the first decision is held until ``others`` more are done: it
    is then answered last, whatever the machine's speed."""

    def __init__(self, engine, others):
        self.engine, self.others = engine, others
        self.gate = None

    async def decide(self, envelope, trace=None, frontend="inprocess"):
        first = self.gate is None
        if first:
            self.gate = asyncio.get_running_loop().create_future()
        decision = await self.engine.decide(envelope, trace, frontend)
        if first:
            await self.gate
        elif not self.gate.done():
            self.others -= 1
            if not self.others:
                self.gate.set_result(None)
        return decision

    def recipient_class(self, rcpt):
        return self.engine.recipient_class(rcpt)


async def serving(engine, protocol, state=None, decider=None, **listen):
    state = state or ServerState(stats=lambda: engine.counts + state.counts)
    factory = protocol_factory(decider or engine, state, engine.config,
                               ListenConfig(protocol, "127.0.0.1:1", **listen))
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def policy_request(ip, helo, instance, state="RCPT"):
    return pol.encode_request({"request": "smtpd_access_policy", "protocol_state": state, "client_address": ip,
                               "helo_name": helo, "sender": "", "recipient": "u@example.org",
                               "instance": instance})


async def close(*writers):
    for writer in writers:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def read_replies(reader, n):
    return [pol.parse_reply(await reader.readuntil(b"\n\n")) for _ in range(n)]


def test_policy_answers_pipelined_requests_in_order_like_in_process(dns):
    async def go():
        engine = Engine(base_config(dns))
        expected = [render(await engine.decide(Envelope(ip, None, helo, "", ("u@example.org",)))) for ip, helo in CASES]
        engine = Engine(base_config(dns))
        server, port = await serving(engine, "policy", decider=FirstLast(engine, len(CASES) - 1))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(policy_request(ip, helo, str(i)) for i, (ip, helo) in enumerate(CASES)))
        got = await read_replies(reader, len(CASES))
        writer.write(policy_request("192.0.2.1", "example.com", "again"))  # the connection persists
        got += await read_replies(reader, 1)
        await close(writer)
        server.close()
        return expected, got

    expected, got = run(go())
    assert got == expected + [expected[0]]
    assert got[1].startswith("550 5.7.1 Sending MTA")


@pytest.mark.parametrize("garbage", [b"this is not a policy request\n\n", b"x=" + b"y" * 10000 + b"\n\n",
                                     b"x=" + b"y" * (pol.MAX_REQUEST + 1)])
def test_policy_malformed_stream_closes_with_no_reply(dns, garbage):
    async def go():
        server, port = await serving(Engine(base_config(dns)), "policy")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(garbage)
        data = await reader.read()
        other_reader, other = await asyncio.open_connection("127.0.0.1", port)  # the server lives on
        other.write(policy_request("192.0.2.1", "example.com", "1"))
        reply = await read_replies(other_reader, 1)
        await close(writer, other)
        server.close()
        return data, reply

    data, reply = run(go())
    assert data == b""
    assert reply[0].startswith("PREPEND Authent:")


def test_policy_oneshot_answers_once_and_closes(dns):
    async def go():
        server, port = await serving(Engine(base_config(dns)), "policy", oneshot=True)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(policy_request("192.0.2.1", "example.net", "1") + policy_request("192.0.2.1", "example.com", "2"))
        data = await reader.read()  # EOF without our half-close: the server closed
        await close(writer)
        server.close()
        return data

    assert run(go()) == b"action=550 5.7.1 Sending MTA '192.0.2.1' not authorized by 'example.net'\n\n"


def test_policy_half_close_is_answered_then_closed(dns):
    async def go():
        server, port = await serving(Engine(base_config(dns)), "policy")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # as Exim's ${readsocket} with shutdown=yes, and without the final empty line
        writer.write(policy_request("192.0.2.1", "example.com", "1")[:-1])
        writer.write_eof()
        data = await reader.read()
        await close(writer)
        server.close()
        return data

    assert run(go()).startswith(b"action=PREPEND Authent: 192.0.2.1 example.com SPF1 PASS")


def test_rpc_answers_as_decisions_complete_tied_by_msgid(dns):
    async def go():
        engine = Engine(base_config(dns))
        expected = [(await engine.decide(Envelope(ip, ident))).as_tuple() for ip, ident in CASES]
        engine = Engine(base_config(dns))
        server, port = await serving(engine, "msgpack-rpc", decider=FirstLast(engine, len(CASES) - 1))
        client = await AsyncClient.connect(f"127.0.0.1:{port}")
        order = []

        async def one(i, ip, ident):
            result = await client.checkID(ip, ident)
            order.append(i)
            return result

        got = await asyncio.gather(*(one(i, ip, ident) for i, (ip, ident) in enumerate(CASES)))
        by_map = await client.call("checkID", {"IP": "192.0.2.1", "ID": "example.net"})
        pong = await client.call("ping")
        stats = await client.call("stats")
        await client.close()
        server.close()
        return expected, got, order, by_map, pong, stats

    expected, got, order, by_map, pong, stats = run(go())
    assert [list(g) for g in got] == [list(e) for e in expected]
    assert order[-1] == 0  # the slow first call was answered last
    assert by_map == ["REJECT", [550, "5.7.1", "Sending MTA '192.0.2.1' not authorized by 'example.net'"], []]
    assert pong == "pong"
    assert stats["decisions:msgpack-rpc:ACCEPT:reputation"] >= 1 and stats["connections:msgpack-rpc"] == 1


@pytest.mark.parametrize("method, params, message", [
    ("nope", [], "unknown method 'nope'"),
    ("checkID", [1, 2], "IP must be a string"),
    ("checkID", [{"IP": "192.0.2.1", "Bogus": 1}], "unknown parameter 'Bogus'"),
    ("checkID", ["192.0.2.1", "example.com", None, None, "r@x"], "R must be an array"),
    ("checkID", ["192.0.2.1"] * 9, "at most 8 params"),
    ("ping", [1], "takes no params"),
])
def test_rpc_errors_name_the_problem(dns, method, params, message):
    async def go():
        server, port = await serving(Engine(base_config(dns)), "msgpack-rpc")
        client = await AsyncClient.connect(f"127.0.0.1:{port}")
        with pytest.raises(CallFailed, match=message):
            await client.call(method, *params)
        assert await client.call("ping") == "pong"  # the connection is still good
        await client.close()
        server.close()

    run(go())


def test_rpc_oversize_message_gets_an_error_then_close(dns):
    async def go():
        server, port = await serving(Engine(base_config(dns)), "msgpack-rpc")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(rpc.encode_request(9, "checkID", ["192.0.2.1", "example.com", None, None, [], [],
                                                      "x" * (rpc.MAX_MESSAGE + 10)]))
        data = await reader.read()
        await close(writer)
        server.close()
        return data

    assert msgpack.unpackb(run(go())) == [1, 9, f"message larger than {rpc.MAX_MESSAGE} bytes", None]


def test_rpc_garbage_closes_only_that_connection_and_notifications_get_no_answer(dns):
    async def go():
        server, port = await serving(Engine(base_config(dns)), "msgpack-rpc")
        good = await AsyncClient.connect(f"127.0.0.1:{port}")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(rpc.encode_notification("ping", []) + b"\xc1garbage")
        data = await reader.read()
        pong = await good.call("ping")
        await good.close()
        await close(writer)
        server.close()
        return data, pong

    assert run(go()) == (b"", "pong")


def test_rpc_half_close_is_answered_then_closed(dns):
    async def go():
        server, port = await serving(Engine(base_config(dns)), "msgpack-rpc")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(rpc.encode_request(5, "checkID", ["192.0.2.1", "example.net"]))
        writer.write_eof()
        data = await reader.read()
        await close(writer)
        server.close()
        return data

    assert msgpack.unpackb(run(go())) == [
        1, 5, None, ["REJECT", [550, "5.7.1", "Sending MTA '192.0.2.1' not authorized by 'example.net'"], []]]


def test_async_client_calls_fail_once_the_connection_is_gone(dns):
    async def go():
        server, port = await serving(Engine(base_config(dns)), "msgpack-rpc")
        client = await AsyncClient.connect(f"127.0.0.1:{port}")
        assert await client.call("ping") == "pong"
        await client.close()
        with pytest.raises(ConnectionError):
            await client.call("ping")
        server.close()

    run(go())


def test_sync_client_against_the_server(dns):
    result = {}

    async def go():
        server, port = await serving(Engine(base_config(dns)), "msgpack-rpc")
        loop = asyncio.get_running_loop()

        def blocking():
            with Client(f"127.0.0.1:{port}", timeout=10) as c:
                result["a"] = c.checkID("192.0.2.1", "example.com")
                with pytest.raises(CallFailed):
                    c.call("nope")
        await loop.run_in_executor(None, blocking)
        server.close()

    run(go())
    assert result["a"] == ("ACCEPT", (250, "", "Sender OK"),
                           [{"label": "Authent:", "text": "192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"}])


def test_policy_internal_error_closes_without_reply(dns):
    async def go():
        engine, state = Engine(base_config(dns)), ServerState()

        async def broken(env, trace=None, frontend=""):
            raise RuntimeError("bug")
        engine.decide = broken
        server, port = await serving(engine, "policy", state)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(policy_request("192.0.2.1", "example.com", "1"))
        data = await reader.read()
        await close(writer)
        server.close()
        return data, state.counts[("internal_errors", "policy")]

    assert run(go()) == (b"", 1)
