"""Fakes for driving the front-ends without sockets or an engine: a transport that records
what the server does to it (uvicorn's MockTransport) and deciders that answer at once or
when the test says."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from checkid.engine.decision import Action, Decision, Envelope, Header

AUTHENT = Header("Authent:", "192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B")
ACCEPTED = Decision(Action.ACCEPT, 250, "", "Sender OK", (AUTHENT,), "reputation")
REJECTED = Decision(Action.REJECT, 550, "5.7.1", "Sending MTA '192.0.2.1' not authorized by 'example.net'",
                    (), "methods")


class FakeTransport:
    """Records writes, pauses and closes; a close reports the loss to the protocol on the next
    loop iteration, as a real transport does."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol
        self.data = bytearray()
        self.reading = True
        self.pauses = 0
        self.closed = False
        self.aborted = False
        #: we half-closed (write_eof)
        self.eof_written = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("192.0.2.9", 4321)}.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Our half-close; the peer, a well-behaved client, then closes its side: the
        protocol's ``eof_received`` on the next loop iteration, and a close unless it keeps
        the connection open."""
        assert not self.closed, "write_eof after close"
        self.eof_written = True
        asyncio.get_running_loop().call_soon(self._peer_eof)

    def _peer_eof(self) -> None:
        if not self.closed and not self.protocol.eof_received():
            self.close()


def connect(protocol: asyncio.Protocol) -> FakeTransport:
    transport = FakeTransport(protocol)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return transport


class RecordingSink:
    """A body sink that keeps the chunks it is given, in order."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def update(self, chunk: bytes) -> None:
        self.chunks.append(bytes(chunk))

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def forged_authent(name: str, value: str) -> bool:
    """A forged-header rule like the engine's: any ``Authent``, and ``Authentication-Results``
    naming ``mx.checkid.test`` (its first word)."""
    key = name.strip().lower()
    if key == "authent":
        return True
    words = value.split(";", 1)[0].split()
    return key == "authentication-results" and bool(words) and words[0].lower() == "mx.checkid.test"


class Decider:
    """Only what a front-end may call (no counts, thresholds or connection state): answers
    ``decisions`` in turn (the last one again when they run out), at once or, with
    ``hold``, when :meth:`release` is called. ``forged`` is the forged-header rule (none is
    forged by default); :meth:`body_digest` hands out a :class:`RecordingSink` (none with
    ``sinks=False``) and records the headers it was given."""

    __slots__ = ("decisions", "envelopes", "fronts", "hold", "waiting", "classes", "forged", "asked", "sinks",
                 "digests")

    def __init__(self, *decisions: Decision, hold: bool = False, classes: dict[str, str] | None = None,
                 forged: Callable[[str, str], bool] | None = None, sinks: bool = True) -> None:
        self.decisions = list(decisions or (ACCEPTED,))
        self.envelopes: list[Envelope] = []
        self.fronts: list[str] = []
        self.hold = hold
        self.waiting: list[asyncio.Future[None]] = []
        self.classes = classes or {}
        self.forged = forged or (lambda name, value: False)
        #: every (name, value) forged_header was asked about
        self.asked: list[tuple[str, str]] = []
        self.sinks = sinks
        #: (headers, sink) per body_digest call
        self.digests: list[tuple[tuple[tuple[str, str], ...], RecordingSink | None]] = []

    async def decide(self, envelope: Envelope, trace: object = None, frontend: str = "inprocess") -> Decision:
        self.envelopes.append(envelope)
        self.fronts.append(frontend)
        decision = self.decisions.pop(0) if len(self.decisions) > 1 else self.decisions[0]
        if self.hold:
            waiting = asyncio.get_running_loop().create_future()
            self.waiting.append(waiting)
            await waiting
        return decision

    def recipient_class(self, rcpt: str) -> str:
        return self.classes.get(rcpt, "")

    def forged_header(self, name: str, value: str) -> bool:
        self.asked.append((name, value))
        return self.forged(name, value)

    def log_address(self, address: str) -> str:
        return address

    def body_digest(self, headers: tuple[tuple[str, str], ...]) -> RecordingSink | None:
        sink = RecordingSink() if self.sinks else None
        self.digests.append((headers, sink))
        return sink

    def release(self) -> None:
        """Let every decision held so far complete."""
        for waiting in self.waiting:
            if not waiting.done():
                waiting.set_result(None)
        self.waiting.clear()


#: bound on waiting for a condition: only a failing test ever waits this long
UNTIL_SECONDS = 30.0


async def until(condition: Callable[[], object], turns: int = 1000) -> None:
    """Let the loop run until ``condition()`` holds. The first ``turns`` iterations only yield
    (the fakes complete in a few); after that each waits a millisecond, up to
    ``UNTIL_SECONDS``: a count of loop turns alone could run out before real sockets deliver
    on a busy machine."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + UNTIL_SECONDS
    n = 0
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not reached in {UNTIL_SECONDS:g} s ({n} loop iterations)")
        n += 1
        await asyncio.sleep(0 if n < turns else 0.001)
