"""The front door's caps and timeouts: a per-worker connection cap and a per-address cap
answered ``421 4.7.0`` before any backend connection opens (real loopback sockets), and the
idle and whole-session deadlines driven by the test, not by waiting (a fake client transport
in front of a real loopback backend)."""
from __future__ import annotations

import dataclasses

import pytest

from checkid.config import Config, ListenConfig, SmtpConfig
from checkid.protocols.base import ServerState
from checkid.protocols.registry import protocol_factory
from checkid.runtime.metrics import COUNTERS
from tests.conftest import run
from tests.protocols.fakes import Decider, connect, until
from tests.protocols.smtp.test_server import FakeMta, SmtpClient, stack

TURNS = 100_000  # loop iterations for loopback round trips (a bound, not a wait)


def exported(counts) -> bool:
    """Every counter the front door bumped is one the metrics export, with its labels."""
    for name, *labels in counts:
        assert name in COUNTERS and len(labels) == len(COUNTERS[name][1]), (name, labels)
    return True


def open_and_greet(port):
    async def go():
        client = await SmtpClient.open(port)
        return client, await client.replies(1)
    return go()


def test_the_per_address_cap_is_421_and_no_backend_connection():
    async def go():
        mta, door, port = await stack(Decider(), smtp=SmtpConfig(max_per_ip=2))
        first, (a,) = await open_and_greet(port)
        second, (b,) = await open_and_greet(port)
        third, refused = await open_and_greet(port)
        eof = await third.reader.read()
        first.close()
        await until(lambda: len(door.state.connections) == 1, turns=TURNS)
        fourth, (d,) = await open_and_greet(port)  # a place is free again
        for c in (second, third, fourth):
            c.close()
        await door.stop()
        mta.stop()
        return mta, door, (a, b, d), refused, eof

    mta, door, greeted, refused, eof = run(go())
    assert [r.code for r in greeted] == [220, 220, 220]
    assert [(r.code, r.xcode) for r in refused] == [(421, "4.7.0")] and eof == b""
    assert len(mta.connections) == 3  # the refused session never cost a backend connection
    assert door.state.counts[("smtp_refused", "max_per_ip")] == 1 and exported(door.state.counts)


def test_the_per_worker_connection_cap_is_421():
    async def go():
        mta, door, port = await stack(Decider(), smtp=SmtpConfig(max_connections=1, max_per_ip=0))
        first, (a,) = await open_and_greet(port)
        second, refused = await open_and_greet(port)
        first.close()
        second.close()
        await door.stop()
        mta.stop()
        return mta, door, a, refused

    mta, door, a, refused = run(go())
    assert a.code == 220 and [(r.code, r.xcode) for r in refused] == [(421, "4.7.0")]
    assert len(mta.connections) == 1 and door.state.counts[("smtp_refused", "max_connections")] == 1


def door_on_fake_transport(mta_port, smtp: SmtpConfig):
    """A front-door connection on a fake client transport, relaying to a real backend."""
    state = ServerState()
    config = dataclasses.replace(Config(), smtp=smtp)
    listen = ListenConfig("smtp", "127.0.0.1:1", backend=f"127.0.0.1:{mta_port}")
    proto = protocol_factory(Decider(), state, config, listen)()
    return proto, connect(proto), state


def test_an_idle_session_gets_421_at_its_deadline_and_not_before():
    async def go():
        mta = FakeMta()
        proto, transport, state = door_on_fake_transport(await mta.start(), SmtpConfig(idle_timeout=300))
        await until(lambda: transport.data.startswith(b"220"), turns=TURNS)
        transport.take()
        deadline = proto.get_timer()
        proto.handle_timer(deadline - 0.001)
        early = transport.closed
        proto.handle_timer(deadline)
        await until(lambda: not state.connections and mta.connections[0].closed, turns=TURNS)
        mta.stop()
        return early, transport, state, deadline - proto.flow.last

    early, transport, state, idle = run(go())
    assert not early and transport.closed and idle == pytest.approx(300)  # RFC 5321 §4.5.3.2.7: at least 5 minutes
    assert transport.data.startswith(b"421 4.4.2 ")
    assert state.counts[("smtp_timeouts", "idle")] == 1


def test_the_whole_session_deadline_ends_even_a_busy_session_and_queues_nothing():
    async def go():
        mta = FakeMta()
        # no idle timer, so the next deadline is the session's
        proto, transport, state = door_on_fake_transport(await mta.start(),
                                                          SmtpConfig(idle_timeout=0, session_timeout=1800))
        await until(lambda: transport.data.startswith(b"220"), turns=TURNS)
        proto.data_received(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        await until(lambda: b"354 " in transport.data, turns=TURNS)
        proto.data_received(b"Subject: slow\r\n\r\nhalf a message\r\n")
        await until(lambda: b"half a message" in mta.connections[0].buf, turns=TURNS)
        transport.take()
        deadline = proto.get_timer()
        proto.handle_timer(deadline - 0.001)
        early = transport.closed
        proto.handle_timer(deadline)
        await until(lambda: not state.connections and mta.connections[0].closed, turns=TURNS)
        mta.stop()
        return early, transport, state, mta

    early, transport, state, mta = run(go())
    assert not early and transport.closed
    assert transport.data == b"421 4.4.2 Error: session too long\r\n"
    assert mta.messages == []  # aborted without the final dot
    assert state.counts[("smtp_timeouts", "session")] == 1
    assert state.counts[("smtp_transactions", "aborted")] == 1 and exported(state.counts)


def test_a_connection_accepted_as_the_shutdown_begins_opens_no_backend_connection():
    async def go():
        mta = FakeMta()
        state = ServerState()
        state.closing = True
        listen = ListenConfig("smtp", "127.0.0.1:1", backend=f"127.0.0.1:{await mta.start()}")
        proto = protocol_factory(Decider(), state, Config(), listen)()
        transport = connect(proto)
        await until(lambda: not state.connections)
        mta.stop()
        return proto, transport

    proto, transport = run(go())
    assert transport.closed and proto.relay is None
