"""The bounds every front-end shares across a worker (issue 14): a deadline per request from
its first byte to its last, a budget for the bytes all connections hold in unfinished
requests, and a shutdown that closes only between requests without a reset."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource

import msgpack
import pytest

from checkid.config import Config, ListenConfig, ServerConfig
from checkid.protocols.base import FlowControl, ServerState
from checkid.protocols.msgpack_rpc import codec as rpc
from checkid.protocols.postfix_policy import codec as pol
from checkid.protocols.registry import protocol_factory
from checkid.throttle import LogThrottle
from tests.conftest import run
from tests.protocols.fakes import AUTHENT, Decider, connect, until
from tests.protocols.test_base import Transport, ended, policy_request

ANSWER = "PREPEND Authent: " + AUTHENT.text


def factory(protocol, decider, state, **server):
    config = dataclasses.replace(Config(), server=ServerConfig(**server))
    return protocol_factory(decider, state, config, ListenConfig(protocol, "127.0.0.1:1"))


# -- the request deadline, pure ------------------------------------------------------------
def test_flow_request_deadline_runs_from_the_first_byte_to_the_last_whatever_the_activity():
    flow = FlowControl(Transport(), 600.0, 8, lambda: 0, now=0.0, request_timeout=30.0)
    assert flow.get_timer() == 600.0  # between requests only the idle deadline
    flow.activity(10.0)
    flow.received(10.0, unfinished=1, completed=0)  # a request's first byte
    for t in range(11, 40):  # a byte a second: activity, but the same request
        flow.activity(float(t))
        flow.received(float(t), unfinished=t - 9, completed=0)
    assert flow.get_timer() == 40.0 and not flow.overdue(39.9) and flow.overdue(40.0)


def test_flow_request_deadline_ends_with_the_request_and_a_new_one_starts_its_own():
    flow = FlowControl(Transport(), 0, 8, lambda: 0, request_timeout=5.0)
    flow.received(1.0, unfinished=100, completed=0)
    flow.received(4.0, unfinished=0, completed=1)  # complete: the decision's time does not count
    assert flow.get_timer() is None and not flow.overdue(100.0)
    flow.received(5.0, unfinished=7, completed=2)  # one completed and the next begun in one read
    assert flow.get_timer() == 10.0
    flow.received(9.0, unfinished=20, completed=3)  # that one completed, another begun
    assert flow.get_timer() == 14.0 and not flow.overdue(13.0)
    assert FlowControl(Transport(), 0, 8, lambda: 0).get_timer() is None  # no request_timeout


def test_flow_request_deadline_starts_again_while_reading_is_paused_by_us():
    t, in_flight = Transport(), [8]
    flow = FlowControl(t, 0, 8, lambda: in_flight[0], request_timeout=5.0)
    flow.received(0.0, unfinished=10, completed=0)
    flow.update()  # 8 in flight: reading pauses, the rest of the request cannot arrive
    assert not flow.overdue(5.0) and flow.get_timer() == 10.0
    in_flight[0] = 0
    flow.update()
    assert flow.overdue(10.0)


@pytest.mark.parametrize("protocol,first_bytes", [("policy", b"request=smtpd_access_policy\n"),
                                                  ("msgpack-rpc", rpc.encode_request(1, "checkID", ["x" * 100])[:20]),
                                                  ("milter", b"\x00\x00\x00\x10O")])
def test_server_closes_a_request_past_its_deadline_logged_and_counted(protocol, first_bytes, caplog):
    async def go():
        state = ServerState(throttle=LogThrottle)
        proto = factory(protocol, Decider(), state, request_timeout=30.0)()
        transport = connect(proto)
        proto.data_received(first_bytes[:1])
        deadline = proto.get_timer()
        for byte in first_bytes[1:]:  # more bytes, still the same request
            proto.data_received(bytes([byte]))
        proto.handle_timer(deadline - 0.001)
        early = transport.closed
        proto.handle_timer(deadline)
        await until(lambda: proto not in state.connections)
        return early, transport.closed, state

    early, closed, state = run(go())
    assert not early and closed and state.counts[("request_timeouts", protocol)] == 1
    assert "not complete 30 s after its first byte" in caplog.text


def test_server_request_deadline_slow_client_closed_while_a_normal_one_is_answered():
    """Real sockets: a client sending one byte per loop tick is closed at the deadline; a normal
    client of the same server meanwhile is answered."""

    async def go():
        state = ServerState()
        server = await asyncio.get_running_loop().create_server(
            factory("policy", Decider(), state, request_timeout=0.3), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        request = policy_request() * 50  # 50 requests: far more bytes than the test sends
        sent = 0
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 20.0
        closed = asyncio.ensure_future(slow_r.read())  # b"" at the close
        answered = []
        while not closed.done() and sent < len(request) and loop.time() < give_up:
            slow_w.write(request[sent:sent + 1])
            sent += 1
            if sent == 5:  # while the slow one trickles, a normal client asks and is answered
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(policy_request())
                answered.append(pol.parse_reply(await r.readuntil(b"\n\n")))
                w.close()
            await asyncio.sleep(0.01)  # the slow client's pace (one byte per tick), not a wait
        got = await asyncio.wait_for(closed, 20.0)
        slow_w.close()
        server.close()
        await server.wait_closed()
        return got, sent, answered, state.counts[("request_timeouts", "policy")]

    got, sent, answered, timeouts = run(go())
    assert got == b"" and sent < len(policy_request()) and answered == [ANSWER] and timeouts == 1


# -- the budget for unfinished requests ------------------------------------------------------
def test_budget_closes_the_connections_holding_the_most_and_serves_the_rest(caplog):
    """50 MessagePack-RPC connections each hold 1 MiB of a message never finished: what the
    worker holds stays under the budget, the connections closed are the holders, and a normal
    request is still answered."""
    budget, big = 8 * 1024 * 1024, rpc.encode_request(1, "checkID", ["x" * (1536 * 1024)])

    async def go():
        state = ServerState(max_unfinished_bytes=budget, throttle=LogThrottle)
        make = factory("msgpack-rpc", Decider(), state)
        holders, totals = [], []
        for _ in range(50):
            proto = make()
            holders.append((proto, connect(proto)))
            for start in range(0, 1024 * 1024, 64 * 1024):
                proto.data_received(big[start:start + 64 * 1024])
                totals.append(state.unfinished_total)
        normal = make()
        transport = connect(normal)
        normal.data_received(rpc.encode_request(7, "checkID", ["192.0.2.1", "example.com"]))
        await until(lambda: transport.data)
        held = sum(p.parser.unfinished for p, t in holders if not t.closed)
        return state, holders, totals, held, msgpack.unpackb(transport.take())

    state, holders, totals, held, answer = run(go())
    refused = state.counts[("connections_refused", "msgpack-rpc", "budget")]
    assert max(totals) <= budget and held == state.unfinished_total <= budget
    assert refused == sum(t.closed for _, t in holders) >= 40 and all(t.aborted for _, t in holders if t.closed)
    assert answer[:3] == [rpc.RESPONSE, 7, None]
    lines = [r for r in caplog.records if "past max_unfinished_bytes" in r.getMessage()]
    assert len(lines) == 1  # a flood writes one line per interval, the counter has them all


def test_rpc_codec_gives_back_the_buffer_of_a_large_message_once_it_is_complete():
    """msgpack never shrinks an unpacker's buffer (kept outside Python's allocator): the parser
    replaces one that grew. 50 parsers that each once held a 1.9 MB message, kept open, would
    hold about 100 MB; they hold what one buffer takes, reused from parser to parser."""
    message = rpc.encode_request(1, "checkID", ["x" * (1900 * 1000)])
    parsers, before = [], _rss()
    for _ in range(50):
        parser = rpc.RpcParser()
        for start in range(0, len(message), 64 * 1024):
            parser.receive_data(message[start:start + 64 * 1024])
        assert parser.next_event() is not None and parser.unfinished == 0
        parsers.append(parser)
    assert _rss() - before < 30_000_000


def test_rpc_connections_between_messages_hold_no_unpacker():
    """An unpacker is 41 KB before any buffer (msgpack's parse stack): 2,000 parsers that have
    each answered a request, or had none yet, hold a few MB, not the 80 MB their unpackers
    would (10,000 idle connections grew workers by 140 MB)."""
    message = rpc.encode_request(1, "checkID", ["192.0.2.1", "example.com"])
    before = _rss()
    parsers = [rpc.RpcParser() for _ in range(2000)]
    for parser in parsers[::2]:
        parser.receive_data(message)
        assert parser.next_event() is not None and parser.unfinished == 0
    assert _rss() - before < 20_000_000


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


# -- a shutdown closes between requests, without a reset --------------------------------------
@pytest.mark.parametrize("protocol", ["policy", "msgpack-rpc"])
def test_shutdown_reads_a_partial_request_to_its_end_answers_it_then_half_closes(protocol):
    request = policy_request() if protocol == "policy" else rpc.encode_request(7, "checkID", ["192.0.2.1", "x"])

    async def go():
        state = ServerState()
        proto = factory(protocol, Decider(), state)()
        transport = connect(proto)
        proto.data_received(request[:10])
        shutting = asyncio.ensure_future(state.shutdown(60.0))
        await until(lambda: proto.closing)
        before = ended(transport)
        proto.data_received(request[10:] + request)  # its end, and one begun after the shutdown
        await shutting
        return before, transport

    before, transport = run(go())
    data = transport.take()
    if protocol == "policy":
        assert pol.parse_reply(data) == ANSWER
    else:
        assert msgpack.unpackb(data)[:3] == [rpc.RESPONSE, 7, None]  # one answer: the later one is not
    assert not before and transport.eof_written and transport.closed and not transport.aborted


@pytest.mark.parametrize("protocol", ["policy", "msgpack-rpc"])
def test_shutdown_under_pipelined_load_answers_or_ends_cleanly_never_resets(protocol):
    """Real sockets: a client pipelines requests on one persistent connection while the
    worker's shutdown runs. Every request it wrote is answered correctly, or the connection
    ends with a clean EOF after the answers: retrying the unanswered ones loses nothing."""
    if protocol == "policy":
        def request(i):
            return policy_request(str(i))

        async def answer(reader):
            return pol.parse_reply(await reader.readuntil(b"\n\n")) == ANSWER
    else:
        def request(i):
            return rpc.encode_request(i, "checkID", ["192.0.2.1", "example.com"])

        unpacker = msgpack.Unpacker()

        async def answer(reader):
            while True:
                for message in unpacker:
                    return message[:3] == [rpc.RESPONSE, message[1], None]
                data = await reader.read(65536)
                if not data:
                    raise asyncio.IncompleteReadError(b"", None)
                unpacker.feed(data)

    async def go():
        state = ServerState()
        server = await asyncio.get_running_loop().create_server(factory(protocol, Decider(), state),
                                                                "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        written, answers, stop = 0, [], asyncio.Event()

        async def write():
            nonlocal written
            while not stop.is_set() and written < 20_000:  # bounded by count, and by the reader's end
                writer.write(b"".join(request(written + i) for i in range(20)))
                written += 20
                await writer.drain()
                await asyncio.sleep(0)

        writing = asyncio.ensure_future(write())
        shutting = None
        try:
            while True:
                try:
                    answers.append(await answer(reader))
                except asyncio.IncompleteReadError as e:
                    assert not e.partial, "the connection ended inside an answer"
                    break
                if len(answers) == 200:
                    server.close()
                    shutting = asyncio.ensure_future(state.shutdown(30.0))
        finally:
            stop.set()
            await asyncio.gather(writing, return_exceptions=True)
            writer.close()
        if shutting is not None:
            await shutting
        await server.wait_closed()
        return written, answers

    written, answers = run(go())  # a reset would raise ConnectionResetError here
    assert 200 <= len(answers) <= written and all(answers)
