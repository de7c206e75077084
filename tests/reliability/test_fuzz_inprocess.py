"""Hostile input against each front-end's pure codec and session, in process (issue 14).

Per protocol, ``size(smoke, 1,000,000)`` generated inputs (:mod:`tests.reliability.generators`)
go, in random chunkings, through the codec and the session as the server drives them, with a
fake decider that never waits (it also runs the engine's input checks on what it is given)
and, for the front door, a fake backend. Every log line is formatted, as a handler would.
The only outcomes allowed are replies, or the connection refused with a ProtocolError (an
``RpcError`` answer for a MessagePack-RPC call); any other exception is a crash, and an input
that takes more than :data:`HANG_SECONDS` of CPU, and more than
:data:`HANG_SECONDS_PER_KIB` per KiB of it, is a hang. Both are reported with the seed
and index that reproduce them (``CHECKID_FUZZ_SEED`` fixes the seed);
:func:`tests.reliability.record` notes the figures.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkid.engine import validate
from checkid.engine.decision import Action, Decision, Envelope
from checkid.errors import ProtocolError
from checkid.protocols import eager
from checkid.protocols.base import ServerState
from checkid.protocols.milter import codec as milter_codec
from checkid.protocols.milter.session import MilterOptions, MilterSession
from checkid.protocols.msgpack_rpc import codec as rpc_codec
from checkid.protocols.msgpack_rpc.service import RpcError, RpcService
from checkid.protocols.postfix_policy import codec as policy_codec
from checkid.protocols.postfix_policy.session import PolicyOptions, PolicySession
from checkid.protocols.smtp import codec as smtp_codec
from checkid.protocols.smtp import proxyproto
from checkid.protocols.smtp.events import Reply
from checkid.protocols.smtp.session import SmtpOptions, SmtpSession, State
from tests.conftest import run
from tests.protocols import fakes
from tests.protocols.smtp.fakes import FakeBackend
from tests.reliability import generators, record, size

#: generated inputs per protocol: about 5 s of CPU in CI, 1,000,000 in full mode
INPUTS = size(5_000, 1_000_000)
#: an input whose handling takes more CPU than this, and more than HANG_SECONDS_PER_KIB for
#: each KiB of it, is a hang: generous (the largest valid input takes a few milliseconds), since
#: a machine's speed is no test's business. Per KiB, because an input may hold thousands of
#: commands, each with its own work: 20 KB of repeated milter end-of-message packets are 2,000
#: decisions, 0.5 s of CPU on a loaded machine (3.5 s once, for 70 KB, at a load of 7); what is
#: looked for is work growing faster than the input (a quadratic loop, a stuck parser)
HANG_SECONDS = 1.0
HANG_SECONDS_PER_KIB = 0.2
#: inputs per event-loop run (each run is bounded by tests.conftest.RUN_SECONDS)
BATCH = 2_000
#: crashes and hangs shown in a failure message
SHOWN = 5
SEED = generators.SEED

T = TypeVar("T")
CONTINUED = Decision(Action.CONTINUE, 250, "", "no verdict yet", (), "methods")
TEMPFAILED = Decision(Action.TEMPFAIL, 451, "4.4.3", "DNS lookup timed out", (), "registry")
DISCARDED = Decision(Action.DISCARD, 250, "", "dropped", (), "policy")
DECISIONS = (fakes.ACCEPTED, fakes.REJECTED, CONTINUED, TEMPFAILED, DISCARDED)


class Suspended(Exception):
    """A session step waited although nothing it calls here ever waits."""


def complete(coro: Coroutine[Any, Any, T]) -> T:
    """Run a session step that must not suspend (the fakes never wait) to its end."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise Suspended("a session step waited with a decider and a backend that never wait")


class CheckingDecider(fakes.Decider):
    """The fake decider, which also puts every envelope through the engine's input checks
    (as ``Engine.decide`` does first): hostile fields must be refused there, not raise."""

    __slots__ = ()

    async def decide(self, envelope: Envelope, trace: object = None, frontend: str = "inprocess") -> Decision:
        if envelope.ip is not None:
            validate.parse_ip(envelope.ip)
        if envelope.helo is not None:
            validate.domain(envelope.helo)
        if envelope.id is not None:
            validate.domain(envelope.id)
        if envelope.sender is not None:
            validate.address_domain(envelope.sender)
        for rcpt in envelope.rcpts:
            validate.address_domain(rcpt)
        self.envelopes.clear()
        return await super().decide(envelope, trace, frontend)


def decider(rng: random.Random) -> CheckingDecider:
    classes = {"r@example.org": "strict"} if rng.random() < 0.2 else None
    return CheckingDecider(*rng.choices(DECISIONS, k=3), classes=classes, forged=fakes.forged_authent)


# -- one connection per protocol, as its server drives codec and session --------------------
def feed_policy(rng: random.Random, data: bytes) -> None:
    parser = policy_codec.RequestParser()
    session = PolicySession(decider(rng), PolicyOptions())

    def drain() -> None:
        while (request := parser.next_event()) is not None:
            policy_codec.encode_reply(complete(session.answer(request)))
    for chunk in generators.chunks(rng, data):
        parser.receive_data(chunk)
        drain()
    parser.receive_eof()
    drain()


def feed_rpc(rng: random.Random, data: bytes) -> None:
    parser = rpc_codec.RpcParser()
    service = RpcService(decider(rng), ServerState())
    try:
        for chunk in generators.chunks(rng, data):
            parser.receive_data(chunk)
            while (event := parser.next_event()) is not None:
                if isinstance(event, (rpc_codec.Request, rpc_codec.Notification)):
                    result: object = None
                    error: str | None = None
                    try:
                        result = complete(service.call(event.method, event.params))
                    except RpcError as e:
                        error = str(e)
                    if isinstance(event, rpc_codec.Request):
                        rpc_codec.encode_response(event.msgid, error, result)
                elif isinstance(event, rpc_codec.BadRequest):
                    rpc_codec.encode_response(event.msgid, event.error, None)
    except rpc_codec.MessageRefused as e:  # answered, when the msgid is known, then closed
        if e.msgid is not None:
            rpc_codec.encode_response(e.msgid, str(e), None)
        raise


def feed_milter(rng: random.Random, data: bytes) -> None:
    parser = milter_codec.CommandParser()
    session = MilterSession(decider(rng), MilterOptions(quarantine=rng.choice(("", "held"))))
    now = 0.0
    for chunk in generators.chunks(rng, data):
        parser.receive_data(chunk)
        while (command := parser.next_event()) is not None:
            now += 0.001
            for response in complete(session.handle(command, now)):
                milter_codec.encode_response(response)
            session.handle_timer(now + 10.0)
            if session.closed:
                return


def feed_smtp(rng: random.Random, data: bytes) -> None:
    proxy: proxyproto.ProxyParser | None = proxyproto.ProxyParser()
    parser = smtp_codec.CommandParser(bare_lf=rng.choice(("normalize", "reject")))
    session: SmtpSession | None = None
    options = SmtpOptions(starttls=rng.random() < 0.3, max_rcpts=100, hold=rng.choice((1024, 1024 * 1024)))

    def write(replies: list[Reply]) -> None:
        for reply in replies:
            smtp_codec.encode_reply(reply)
    try:
        for chunk in generators.chunks(rng, data):
            if proxy is not None:
                proxy.receive_data(chunk)
                if proxy.header is None:
                    continue
                header, chunk, proxy = proxy.header, proxy.remainder, None
                ip = header.src_addr if header.command == "PROXY" and header.src_port is not None else "127.0.0.1"
                session = SmtpSession(decider(rng), FakeBackend(), options, ip, wall=lambda: 1_700_000_000.0)
                write(complete(session.open()))
            assert session is not None
            parser.receive_data(chunk)
            while not session.closed and (event := parser.next_event()) is not None:
                write(complete(session.handle(event)))
                if parser.mode is smtp_codec.Mode.WAIT:
                    if session.state is State.DATA:
                        parser.start_data()
                    elif session.state is State.TLS:
                        parser.start_tls()
                        session.tls_started()  # the handshake, as if it succeeded
                    else:
                        parser.resume()
            if session.closed:
                return
    finally:
        if session is not None:
            session.lost()


FEEDERS: dict[str, Callable[[random.Random, bytes], None]] = {
    "policy": feed_policy, "msgpack-rpc": feed_rpc, "milter": feed_milter, "smtp": feed_smtp,
}
#: what a connection may end with besides its replies: the peer's protocol error
ALLOWED: tuple[type[BaseException], ...] = (ProtocolError,)


# -- the phase --------------------------------------------------------------------------------
@dataclass
class Figures:
    inputs: int = 0
    refused: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    max_cpu_ms: float = 0.0
    #: the input that took it: "index kind"
    slowest: str = ""
    kinds: Counter[str] = field(default_factory=Counter)


def describe(protocol: str, index: int, item: generators.Input, what: str) -> str:
    shown = item.data if len(item.data) <= 300 else item.data[:300] + b"..."
    return (f"{protocol} input {index} (seed {SEED}, kind {item.kind}, {len(item.data)} bytes; reproduce with "
            f"generators.make({SEED}, {protocol!r}, {index})): {shown!r}\n{what}")


class FormatOnly(logging.Handler):
    """Formats every record (a bad format string or argument would raise here) and keeps
    nothing: a million inputs' lines must not pile up in the test runner's capture."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)
        self.lines += 1

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # noqa: PLE0704 - a record that cannot be formatted is a crash of the input that logged it


@pytest.fixture
def formatted_logs() -> Iterator[FormatOnly]:
    """checkid's loggers at INFO into :class:`FormatOnly` alone (not up to the runner's
    capture), for the test."""
    logger = logging.getLogger("checkid")
    saved = logger.handlers[:], logger.level, logger.propagate
    handler = FormatOnly()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger.handlers[:], logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    yield handler
    logger.handlers[:], logger.level, logger.propagate = saved


def only_to(handler: FormatOnly) -> None:
    """Leave ``handler`` alone on checkid's logger. Called in the test body: pytest adds its
    capture handlers to that logger for the call phase, after the fixtures ran, and kept every
    record for the report (1.4 million over a million inputs: gigabytes, whose collections then
    showed up as seconds of CPU of whichever input was running)."""
    logging.getLogger("checkid").handlers[:] = [handler]


def fuzz(protocol: str, start: int, count: int, figures: Figures) -> None:
    feed = FEEDERS[protocol]

    async def batch() -> None:
        for index in range(start, start + count):
            rng = generators.rng_for(SEED, protocol, index)
            item = generators.GENERATORS[protocol](rng)
            figures.inputs += 1
            figures.kinds[item.kind] += 1
            began = time.process_time()
            try:
                feed(rng, item.data)
            except ALLOWED:
                figures.refused += 1
            except Exception:  # noqa: BLE001 - what this suite is looking for
                if len(figures.crashes) < 1000:
                    figures.crashes.append(describe(protocol, index, item, traceback.format_exc()))
            cpu = time.process_time() - began
            if cpu * 1000 > figures.max_cpu_ms:
                figures.max_cpu_ms, figures.slowest = cpu * 1000, f"{index} {item.kind}"
            if cpu > max(HANG_SECONDS, HANG_SECONDS_PER_KIB * len(item.data) / 1024):
                figures.hangs.append(describe(protocol, index, item, f"{cpu:.2f} s of CPU"))
    run(batch())


@pytest.mark.parametrize("protocol", generators.PROTOCOLS)
def test_fuzz_codec_and_session_only_reply_or_refuse(protocol: str, formatted_logs: FormatOnly) -> None:
    only_to(formatted_logs)
    figures = Figures()
    began = time.monotonic()
    for start in range(0, INPUTS, BATCH):
        fuzz(protocol, start, min(BATCH, INPUTS - start), figures)
    seconds = time.monotonic() - began
    record(f"fuzz in-process {protocol}", seed=SEED, inputs=figures.inputs, refused=figures.refused,
           crashes=len(figures.crashes), hangs=len(figures.hangs), max_cpu_ms=round(figures.max_cpu_ms, 1),
           slowest=figures.slowest,
           log_lines=formatted_logs.lines, seconds=round(seconds, 1), kinds=len(figures.kinds))
    assert figures.inputs == INPUTS
    assert not figures.crashes, f"{len(figures.crashes)} crashes (seed {SEED}):\n\n" + "\n\n".join(
        figures.crashes[:SHOWN])
    assert not figures.hangs, f"{len(figures.hangs)} hangs (seed {SEED}):\n\n" + "\n\n".join(figures.hangs[:SHOWN])
    # every kind of input was made (the generator mixes them all), and some were refused
    # and some were not
    assert len(figures.kinds) >= 10 and 0 < figures.refused < figures.inputs


@pytest.mark.parametrize("protocol", generators.PROTOCOLS)
@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_generators_valid_input_is_taken_whole(protocol: str, seed: int) -> None:
    """The valid streams each generator starts from decode with no refusal, in any chunking,
    so the spoilt ones really are spoilt versions of something the codec takes."""
    rng = random.Random(seed)
    data = generators.VALID[protocol](rng)
    if protocol == "smtp":
        data = proxyproto.encode_v2("192.0.2.1", 40000, "127.0.0.1", 25) + data
    run(_feed_async(FEEDERS[protocol], rng, data))


async def _feed_async(feed: Callable[[random.Random, bytes], None], rng: random.Random, data: bytes) -> None:
    feed(rng, data)


# -- what the fuzzing found, kept as plain tests ----------------------------------------------
@pytest.mark.parametrize("bare_lf", ["normalize", "reject"])
def test_fuzz_found_smtp_command_with_a_cr_inside_is_a_bad_line_not_a_crash(bare_lf: str) -> None:
    """``MAIL FROM:<u@example.com>\\r\\r\\n`` (and a CR anywhere inside a command) reached the
    session, whose relay refused to encode it: ValueError out of ``handle``, an internal error
    closing the connection. It is a bad line, answered 500, and nothing reaches the backend."""
    async def go() -> tuple[list[Reply], FakeBackend]:
        backend = FakeBackend()
        session = SmtpSession(fakes.Decider(), backend, SmtpOptions(), "192.0.2.1")
        parser = smtp_codec.CommandParser(bare_lf=bare_lf)  # type: ignore[arg-type]
        complete(session.open())
        parser.receive_data(b"EHLO mail.example.com\r\nMAIL FROM:<u@example.com> SIZE=100\r\r\n"
                            b"MAIL FROM:<u@exa\rmple.com>\r\nHELO a\rb\r\nNOOP\r\n")
        out: list[Reply] = []
        while (event := parser.next_event()) is not None:
            out += complete(session.handle(event))
        return out, backend
    replies, backend = run(go())
    assert [r.code for r in replies] == [250, 500, 500, 500, 250]
    assert all("bare <CR>" in r.text for r in replies[1:4])
    assert backend.lines == []  # no MAIL went on


def test_fuzz_found_three_pipelined_policy_requests_of_one_instance_share_a_waiting_decision() -> None:
    """Found against the daemon: three pipelined requests of one instance while its decision
    waits (on DNS). The second awaits the first's Task and is handed on by ``eager.start``
    with the Task's ``_asyncio_future_blocking`` still set (its own Task has not run yet), so
    the third's ``await`` raised "await wasn't used with future": an internal error, the
    connection closed with no reply."""
    async def go() -> list[str]:
        held = fakes.Decider(fakes.ACCEPTED, hold=True)
        session = PolicySession(held, PolicyOptions())
        request = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "192.0.2.1",
                   "helo_name": "example.com", "instance": "a.1", "recipient": "r@example.org"}
        answers = [eager.start(session.answer(dict(request))) for _ in range(3)]  # as PolicyProtocol.dispatch
        await fakes.until(lambda: held.waiting)
        held.release()
        return list(await asyncio.gather(*answers))
    answers = run(go())
    assert len(answers) == 3 and answers[0].startswith("PREPEND ") and answers[1:] == ["DUNNO", "DUNNO"]
