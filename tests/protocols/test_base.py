"""What every front-end server shares: back-pressure, the idle deadline driven by a given
``now``, connection tracking and graceful shutdown (fake transports, no sockets, no sleeps)."""
from __future__ import annotations

import asyncio
import dataclasses

import msgpack
import pytest

from checkid.config import Config, ListenConfig, ServerConfig
from checkid.errors import CheckidError
from checkid.protocols import base
from checkid.protocols.base import FlowControl, ServerState
from checkid.protocols.milter import codec as milter
from checkid.protocols.milter.events import (ACCEPT, CONTINUE, Abort, Connect, EndOfMessage, HeaderField, Helo,
                                             InsertHeader, Mail, OptNeg, OptNegReply, ReplyCode)
from checkid.protocols.msgpack_rpc import codec as rpc
from checkid.protocols.msgpack_rpc.service import RpcError, RpcService
from checkid.protocols.postfix_policy import codec as pol
from checkid.protocols.registry import protocol_factory
from tests.conftest import run
from tests.protocols.fakes import ACCEPTED, AUTHENT, REJECTED, Decider, connect, until

IDLE = 30.0


class Transport:
    def __init__(self):
        self.reading = True
        self.closing = False

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def is_closing(self):
        return self.closing


def make(protocol, decider, state=None, **listen):
    config = dataclasses.replace(Config(), server=ServerConfig(idle_timeout=IDLE))
    factory = protocol_factory(decider, state or ServerState(), config, ListenConfig(protocol, "127.0.0.1:1", **listen))
    return factory()


def ended(transport):
    """Closed by us, or half-closed (:meth:`Server.finish`: the close follows the peer's EOF)."""
    return transport.closed or transport.eof_written


def policy_request(instance="1"):
    return pol.encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                               "client_address": "192.0.2.1", "helo_name": "example.com", "sender": "",
                               "recipient": "u@example.org", "instance": instance})


#: one request of each protocol that asks for a decision, and how to read its answer
REQUESTS = {
    "policy": (policy_request(), lambda data: pol.parse_reply(data)),
    "msgpack-rpc": (rpc.encode_request(7, "checkID", ["192.0.2.1", "example.com"]), msgpack.unpackb),
}
MILTER_OPEN = b"".join(milter.encode_command(c) for c in (OptNeg(6, 0x1FF, 0x1FFFFF), Connect("h", "4", 25, "192.0.2.1"),
                                                          Helo("example.com")))


def milter_replies(data):
    parser = milter.ResponseParser()
    parser.receive_data(data)
    out = []
    while (event := parser.next_event()) is not None:
        out.append(event)
    return out


def test_flow_reading_pauses_while_the_peer_does_not_read_or_too_much_is_in_flight():
    t, in_flight = Transport(), [0]
    flow = FlowControl(t, 0, 3, lambda: in_flight[0])
    flow.pause_writing()
    paused_by_writes = not t.reading
    flow.resume_writing()
    resumed = t.reading
    in_flight[0] = 3
    flow.update()
    paused_by_load = not t.reading
    in_flight[0] = 2
    flow.update()
    assert (paused_by_writes, resumed, paused_by_load, t.reading) == (True, True, True, True)


def test_flow_idle_deadline_follows_activity_and_waits_for_work_in_flight():
    in_flight = [0]
    flow = FlowControl(Transport(), 10.0, 8, lambda: in_flight[0], now=100.0)
    assert flow.get_timer() == 110.0
    assert not flow.handle_timer(109.9)
    flow.activity(105.0)  # data arrived: the deadline moves
    assert flow.get_timer() == 115.0 and not flow.handle_timer(110.0)
    in_flight[0] = 1  # a request in flight is not idleness: the idle time starts again
    assert not flow.handle_timer(115.0) and flow.get_timer() == 125.0
    in_flight[0] = 0
    assert not flow.handle_timer(124.0) and flow.handle_timer(125.0)
    assert FlowControl(Transport(), 0, 8, lambda: 0).get_timer() is None  # no idle timeout


@pytest.mark.parametrize("protocol", sorted(REQUESTS))  # the front door needs a backend: tests/protocols/smtp
def test_server_closes_a_connection_idle_until_its_deadline(protocol):
    async def go():
        proto = make(protocol, Decider())
        transport = connect(proto)
        deadline = proto.get_timer()
        proto.handle_timer(deadline - 0.001)
        early = transport.closed
        proto.handle_timer(deadline)
        await until(lambda: proto.closed and not proto.state.connections)
        return early, transport.closed, transport.aborted

    assert run(go()) == (False, True, False)


@pytest.mark.parametrize("protocol", sorted(REQUESTS))
def test_server_with_a_request_in_flight_is_not_idle(protocol):
    async def go():
        decider = Decider(hold=True)
        proto = make(protocol, decider)
        transport = connect(proto)
        proto.data_received(REQUESTS[protocol][0])
        deadline = proto.get_timer()
        proto.handle_timer(deadline)
        busy_closed = transport.closed
        decider.release()
        await until(lambda: transport.data and not proto.in_flight())
        proto.handle_timer(proto.get_timer())
        return busy_closed, ended(transport)

    assert run(go()) == (False, True)


@pytest.mark.parametrize("protocol", sorted(REQUESTS))
def test_shutdown_answers_what_is_in_flight_then_closes(protocol):
    async def go():
        decider, state = Decider(hold=True), ServerState()
        proto = make(protocol, decider, state)
        transport = connect(proto)
        request, parse = REQUESTS[protocol]
        proto.data_received(request)
        await until(lambda: decider.waiting)
        opened = (state.open[proto.front], state.counts[("connections", proto.front)])
        shutting = asyncio.ensure_future(state.shutdown(60.0))
        await until(lambda: proto.closing)
        proto.data_received(request)  # asked after the shutdown: not answered
        still_open = not transport.closed
        decider.release()
        await shutting
        return opened, still_open, parse(bytes(transport.data)), transport.aborted, state.open[proto.front]

    opened, still_open, answer, aborted, open_now = run(go())
    assert opened == (1, 1) and still_open and not aborted and open_now == 0
    assert answer == ("PREPEND Authent: " + AUTHENT.text if protocol == "policy"
                      else [1, 7, None, list(map(_listify, ACCEPTED.as_tuple()))])


def _listify(value):
    return list(value) if isinstance(value, tuple) else value


def test_shutdown_aborts_what_is_still_busy_after_the_timeout():
    async def go():
        decider, state = Decider(hold=True), ServerState()
        proto = make("policy", decider, state)
        transport = connect(proto)
        proto.data_received(policy_request())
        await until(lambda: decider.waiting)
        await state.shutdown(0)
        return transport.aborted, transport.data, state.connections

    assert run(go()) == (True, bytearray(), set())


def test_shutdown_closes_an_idle_milter_connection_at_once():
    async def go():
        state = ServerState()
        before = asyncio.all_tasks()
        proto = make("milter", Decider(hold=True), state)
        transport = connect(proto)
        proto.data_received(MILTER_OPEN)
        negotiated = milter_replies(transport.take())
        tasks = asyncio.all_tasks() - before  # an idle connection runs nothing
        await state.shutdown(60.0)  # returns when the connection is gone: nothing to wait for
        return negotiated, tasks, transport.closed, transport.aborted, state.open["milter"]

    negotiated, tasks, closed, aborted, open_now = run(go())
    assert isinstance(negotiated[0], OptNegReply) and tasks == set()
    assert closed and not aborted and open_now == 0


def test_shutdown_closes_a_milter_connection_after_its_message_ends():
    async def go():
        decider, state = Decider(hold=True), ServerState()
        proto = make("milter", decider, state)
        transport = connect(proto)
        proto.data_received(MILTER_OPEN + milter.encode_command(Mail(("<a@example.com>",))))
        await until(lambda: decider.waiting)  # the decision at MAIL is pending
        transport.take()
        shutting = asyncio.ensure_future(state.shutdown(60.0))
        await until(lambda: proto.closing)
        decider.release()
        await until(lambda: transport.data)
        after_mail = (milter_replies(transport.take()), transport.closed)
        proto.data_received(milter.encode_command(HeaderField("Subject", "x")))
        proto.data_received(milter.encode_command(EndOfMessage()))
        await shutting
        return after_mail, milter_replies(transport.take()), transport.closed, transport.aborted

    after_mail, at_eom, closed, aborted = run(go())
    assert after_mail == ([CONTINUE], False)  # in a message: the connection stays for its end
    assert at_eom == [InsertHeader(0, "Authent", " " + AUTHENT.text), ACCEPT] and closed and not aborted


def test_shutdown_of_a_milter_connection_waits_for_a_pending_rejection_then_closes():
    async def go():
        decider, state = Decider(REJECTED, hold=True), ServerState()
        proto = make("milter", decider, state)
        transport = connect(proto)
        proto.data_received(MILTER_OPEN + milter.encode_command(Mail(("<a@example.net>",))))
        await until(lambda: decider.waiting)
        transport.take()
        shutting = asyncio.ensure_future(state.shutdown(60.0))
        decider.release()
        await until(lambda: transport.data)
        reply = milter_replies(transport.take())
        # the MTA ends a refused transaction with ABORT: the connection then closes
        proto.data_received(milter.encode_command(Abort()))
        await shutting
        return reply, transport.closed

    reply, closed = run(go())
    assert isinstance(reply[0], ReplyCode) and closed


def test_rpc_stats_answer_from_the_states_stats_when_given_else_its_counts():
    async def go():
        state = ServerState()
        state.counts[("connections", "msgpack-rpc")] += 2
        own = await RpcService(Decider(), state).call("stats", [])
        given = ServerState(stats=lambda: {("decisions", "msgpack-rpc", "ACCEPT", "reputation"): 5})
        return own, await RpcService(Decider(), given).call("stats", [])

    assert run(go()) == ({"connections:msgpack-rpc": 2}, {"decisions:msgpack-rpc:ACCEPT:reputation": 5})


def test_rpc_errors_are_checkid_errors():
    assert issubclass(RpcError, CheckidError)



def test_shutdown_also_ends_a_milter_connection_accepted_after_it_began():
    async def go():
        decider, state = Decider(hold=True), ServerState()
        busy = make("milter", decider, state)
        connect(busy)
        busy.data_received(MILTER_OPEN)
        shutting = asyncio.ensure_future(state.shutdown(60.0))
        await until(lambda: state.closing)
        late = make("milter", decider, state)  # accepted in the loop turn of the shutdown
        transport = connect(late)
        closed_at_once = ended(transport)
        decider.release()
        await shutting
        return closed_at_once, state.connections

    assert run(go()) == (True, set())


@pytest.mark.parametrize("protocol", ["policy", "msgpack-rpc"])
def test_a_shutdown_answers_the_first_request_of_a_connection_just_made_then_ends_it(protocol):
    """A client retrying what a closing worker refused connects and writes at once; its new
    connection, taken just before this worker's own shutdown, gets its answer (back-to-back
    reloads lost such retries)."""
    async def go():
        state = ServerState()
        late = make(protocol, Decider(), state)
        transport = connect(late)
        shutting = asyncio.ensure_future(state.shutdown(60.0))
        await until(lambda: state.closing)
        open_meanwhile = not ended(transport)
        late.data_received(REQUESTS[protocol][0])
        await shutting
        return open_meanwhile, bool(transport.take()), ended(transport)

    assert run(go()) == (True, True, True)


@pytest.mark.parametrize("protocol", ["policy", "msgpack-rpc"])
def test_a_shutdown_ends_a_new_connection_whose_first_request_does_not_come(protocol, monkeypatch):
    monkeypatch.setattr(base, "FIRST_REQUEST_WAIT", 0.05)

    async def go():
        state = ServerState()
        transport = connect(make(protocol, Decider(), state))
        await state.shutdown(60.0)
        return ended(transport), transport.take()

    assert run(go()) == (True, b"")


def test_a_shutdown_ends_at_once_a_connection_that_sent_nothing_for_long(monkeypatch):
    monkeypatch.setattr(base, "FIRST_REQUEST_WAIT", 0.0)

    async def go():
        state = ServerState()
        transport = connect(make("policy", Decider(), state))
        state_shutdown = asyncio.ensure_future(state.shutdown(60.0))
        await until(lambda: state.closing)
        at_once = ended(transport)
        await state_shutdown
        return at_once

    assert run(go()) is True


# -- any codec failure is a protocol error of that connection only (issue 14) -----------------
class BrokenParser:
    """A codec with a bug hostile input found: ``receive_data`` raises what it raises."""

    pending = 0
    pending_bytes = 0

    def __init__(self, error):
        self.error = error

    def receive_data(self, data):
        raise self.error

    def receive_eof(self):
        pass

    def next_event(self):
        return None


@pytest.mark.parametrize("protocol", ["policy", "msgpack-rpc", "milter"])
@pytest.mark.parametrize("error", [RecursionError("maximum recursion depth exceeded"), IndexError("index"),
                                   MemoryError()])
def test_server_closes_a_connection_whose_codec_raises_anything_with_a_log_line_and_metrics(protocol, error, caplog):
    async def go():
        state = ServerState()
        proto, other = make(protocol, Decider(), state), make(protocol, Decider(), state)
        transport, untouched = connect(proto), connect(other)
        proto.parser = BrokenParser(error)
        proto.data_received(b"\x91" * 1000)  # nothing escapes data_received
        await until(lambda: proto.closed and proto not in state.connections)
        return state, transport, untouched

    state, transport, untouched = run(go())
    assert transport.closed and not untouched.closed
    assert state.counts[("protocol_errors", protocol)] == 1 and state.counts[("codec_exceptions", protocol)] == 1
    assert f"undecodable input ({type(error).__name__}" in caplog.text and "Traceback" not in caplog.text


def test_milter_command_decoding_that_raises_anything_closes_that_connection():
    async def go():
        state = ServerState()
        proto = make("milter", Decider(), state)
        transport = connect(proto)
        proto.parser.next_event = lambda: (_ for _ in ()).throw(UnicodeDecodeError("utf-8", b"", 0, 1, "bad"))
        proto.data_received(MILTER_OPEN)
        await until(lambda: proto.closed)
        return state, transport

    state, transport = run(go())
    assert transport.closed and state.counts[("codec_exceptions", "milter")] == 1


@pytest.mark.parametrize("depth", [100, 1000, 1023])
def test_rpc_deep_nesting_gets_an_error_reply_then_close_with_a_metric(depth):
    async def go():
        state = ServerState()
        proto = make("msgpack-rpc", Decider(), state)
        transport = connect(proto)
        proto.data_received(b"\x94\x00\x09\xa7checkID" + b"\x91" * depth + b"\xc0")  # [0, 9, "checkID", [[[...nil]]]]
        await until(lambda: proto.closed)
        return state, transport

    state, transport = run(go())
    msg = msgpack.unpackb(transport.take())
    assert msg[:2] == [rpc.RESPONSE, 9] and "deeper than" in msg[2] and transport.closed
    assert state.counts[("limits_exceeded", "msgpack-rpc", "nesting")] == 1
    assert state.counts[("protocol_errors", "msgpack-rpc")] == 1


def test_flow_reading_pauses_while_too_many_bytes_wait_unhandled():
    t, buffered = Transport(), [0]
    flow = FlowControl(t, 0, 100, lambda: 1, buffered=lambda: buffered[0], max_buffered=1000)
    buffered[0] = 999
    flow.update()
    below = t.reading
    buffered[0] = 1000
    flow.update()
    paused = not t.reading
    buffered[0] = 10
    flow.update()
    assert below and paused and t.reading


def test_a_new_connection_leaves_its_idle_timer_to_the_states_sweep(monkeypatch):
    async def go():
        state = ServerState()
        proto = make("milter", Decider(), state)
        connect(proto)
        proto.data_received(MILTER_OPEN)
        own_before = proto._timer
        await until(lambda: proto._timer is not None)  # the sweep, TIMER_DELAY later
        return own_before, proto._timer.when(), proto.get_timer()

    monkeypatch.setattr(base, "TIMER_DELAY", 0.05)
    before, armed_at, deadline = run(go())
    assert before is None  # its idle deadline is far later than the sweep
    assert abs(armed_at - deadline) < 0.002  # armed by the sweep for the idle deadline (the loop's clock is in ms)


def test_a_deadline_before_the_sweep_is_armed_at_once(monkeypatch):
    async def go():
        proto = make("milter", Decider())
        connect(proto)
        return proto._timer

    monkeypatch.setattr(base, "TIMER_DELAY", IDLE + 10)
    assert run(go()) is not None
