"""Back-pressure and idle connections, shared by the front-ends."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from checkid.config import ListenConfig, ServerConfig
from checkid.engine.engine import Engine
from checkid.protocols.registry import protocol_factory
from checkid.protocols.flow import FlowControl
from tests.conftest import base_config, run


class FakeTransport:
    def __init__(self):
        self.reading = True
        self.closing = False

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def is_closing(self):
        return self.closing


def test_reading_pauses_while_the_peer_does_not_read_or_too_much_is_in_flight():
    async def go():
        t, in_flight = FakeTransport(), [0]
        flow = FlowControl(t, 0, 3, lambda: in_flight[0], lambda: None)
        flow.pause_writing()
        paused_by_writes = not t.reading
        flow.resume_writing()
        resumed = t.reading
        in_flight[0] = 3
        flow.update()
        paused_by_load = not t.reading
        in_flight[0] = 2
        flow.update()
        return paused_by_writes, resumed, paused_by_load, t.reading

    assert run(go()) == (True, True, True, True)


@pytest.mark.parametrize("protocol", ["policy", "msgpack-rpc"])
def test_idle_connections_are_closed(dns, protocol):
    async def go():
        config = dataclasses.replace(base_config(dns), server=ServerConfig(idle_timeout=0.2))
        factory = protocol_factory(Engine(config), config, ListenConfig(protocol, "127.0.0.1:1"))
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        data = await asyncio.wait_for(reader.read(), 10)  # EOF: the server closed the quiet connection
        writer.close()
        await writer.wait_closed()
        server.close()
        return data

    assert run(go()) == b""
