"""A whole milter session through checkid's protocol code (pytest-benchmark), beside a
reference measured in the same run.

Run: ``.venv/bin/python -m pytest bench/test_milter.py --benchmark-only`` (or ``sh bench/micro``).

Each round plays BATCH sessions on one uvloop loop, as ``bench/c/miltersessions.c`` plays them
(OPTNEG; CONNECT, HELO, MAIL; RCPT; DATA, three headers, end of headers, a body chunk, end of
message; QUIT: one read each, since the MTA waits for a reply after each group), through
:class:`MilterProtocol` on a transport that only collects what is written: connection
set-up, framing, the session, the decisions (a fixed one, as ``bench/nullserver.py``, or the
engine with every DNS answer cached), rendering and teardown; no socket. The reference only
frames the same bytes (``Framer``): what any milter written on this stack must do at least.
Two more rows play the sessions an MTA sends once the milter has negotiated steps away (the
decider needs no body; no header either): fewer commands, the same verdicts.
"""
from __future__ import annotations

import asyncio
from typing import Any

from bench.nullserver import NullDecider
from checkid.engine.engine import Engine
from checkid.protocols.base import ServerState
from checkid.protocols.milter import codec
from checkid.protocols.milter.events import (Body, Command, Connect, Data, EndOfHeaders, EndOfMessage, HeaderField,
                                             Helo, Mail, OptNeg, Quit, Rcpt)
from checkid.protocols.milter.server import MilterProtocol
from checkid.protocols.milter.session import MilterOptions
from testsupport.config import base_config

BATCH = 100
#: what the MTA sends before each wait for a reply (the NR_* bits negotiated)
GROUPS: list[list[Command]] = [
    [OptNeg(6, 0x1FF, 0x1FFFFF)],
    [Connect("mx.example.com", "4", 25, "192.0.2.1"), Helo("example.com"), Mail(("<a@example.com>",))],
    [Rcpt(("<b@example.org>",))],
    [Data(), HeaderField("From", "a@example.com"), HeaderField("To", "b@example.org"),
     HeaderField("Subject", "bench"), EndOfHeaders(), Body(b"hello\r\n" * 20), EndOfMessage()],
    [Quit()]]
READS = [b"".join(codec.encode_command(c) for c in group) for group in GROUPS]
#: what the MTA sends when the decider needs no body (NOBODY, NOEOH; and NODATA): the headers
#: (forged ones are removed), no end of headers, no body
READS_NO_BODY = [b"".join(codec.encode_command(c) for c in group if not isinstance(c, (Data, EndOfHeaders, Body)))
                 for group in GROUPS]
#: and when it needs no header either (NOHDRS): the envelope and the end of message
READS_NO_MESSAGE = [b"".join(codec.encode_command(c) for c in group
                             if not isinstance(c, (Data, HeaderField, EndOfHeaders, Body))) for group in GROUPS]


class NeedingDecider(NullDecider):
    """The null decider, saying what of a message it needs (what the milter negotiates)."""

    def __init__(self, headers: bool, body: bool) -> None:
        self.needs = (headers, body)

    def content_needed(self) -> tuple[bool, bool]:
        return self.needs


class SinkTransport:
    """Takes writes and closes; tells the protocol nothing (the batch ends each session)."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _sessions(loop: asyncio.AbstractEventLoop, decider: Any, reads: list[bytes] = READS) -> Any:
    state = ServerState()
    options = MilterOptions()

    async def many() -> int:
        written = 0
        for _ in range(BATCH):
            proto = MilterProtocol(decider, state, options)
            transport = SinkTransport()
            proto.connection_made(transport)  # type: ignore[arg-type]
            for data in reads:
                proto.data_received(data)
                await asyncio.sleep(0)  # let a decision that suspended go on, as the next read would
            proto.connection_lost(None)
            written += transport.written
        return written

    assert loop.run_until_complete(many()) > 0
    assert not state.connections
    return lambda: loop.run_until_complete(many())


def test_milter_session_null_decider(benchmark, loop):
    benchmark.extra_info["batch"] = BATCH
    benchmark(_sessions(loop, NullDecider()))


def test_milter_session_null_decider_no_body(benchmark, loop):
    benchmark.extra_info["batch"] = BATCH
    benchmark(_sessions(loop, NeedingDecider(headers=True, body=False), READS_NO_BODY))


def test_milter_session_null_decider_no_message(benchmark, loop):
    benchmark.extra_info["batch"] = BATCH
    benchmark(_sessions(loop, NeedingDecider(headers=False, body=False), READS_NO_MESSAGE))


def test_milter_session_warm_engine(benchmark, server, loop):
    engine = Engine(base_config(server))
    run = _sessions(loop, engine)
    # warm: a batch's sessions end one loop turn after their last read, which may cancel a
    # lookup still on its way (how far they got depends on the machine), so warm until a
    # whole batch asks nothing (bounded)
    for _ in range(50):
        asked = server.total
        run()
        if server.total == asked:
            break
    asked = server.total
    benchmark.extra_info["batch"] = BATCH
    benchmark(run)
    assert server.total == asked  # warm: no DNS query during the measurement


def test_reference_milter_framing_only(benchmark):
    def many() -> int:
        n = 0
        for _ in range(BATCH):
            framer = codec.Framer()
            for data in READS:
                framer.feed(data)
                while framer.next_packet() is not None:
                    n += 1
        return n

    benchmark.extra_info["batch"] = BATCH
    benchmark(many)
