"""The accept gate: one listening socket polled by every worker, each taking a new connection
only when no live worker has fewer (issue 15)."""
from __future__ import annotations

import asyncio
import socket
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from checkid.config import ListenConfig
from checkid.runtime import listeners
from tests.conftest import run
from tests.runtime.test_listeners import poll
from testsupport.processes import free_port


def accepting(counts: list[int]) -> set[int]:
    return {i for i, mine in enumerate(counts) if listeners.may_accept(mine, counts[:i] + counts[i + 1:])}


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=64))
def test_the_least_loaded_worker_always_accepts_and_only_a_busier_one_waits(counts: list[int]) -> None:
    takers = accepting(counts)
    assert takers and counts.index(min(counts)) in takers
    for i, mine in enumerate(counts):
        if i not in takers:
            assert any(other < mine for other in counts)


@given(st.integers(min_value=0, max_value=10_000))
def test_a_worker_alone_accepts(mine: int) -> None:
    assert listeners.may_accept(mine, [])


def test_the_slots_share_one_socket_and_a_gate() -> None:
    listener = listeners.bind(ListenConfig(protocol="policy", address=f"127.0.0.1:{free_port()}"), 3)
    try:
        names = {s.getsockname() for s in listener.sockets}
        gates = {id(getattr(s, "gate")) for s in listener.sockets}
        assert len(names) == 1 and len(gates) == 1
        assert [getattr(listener.for_slot(i), "slot") for i in range(3)] == [0, 1, 2]
    finally:
        listener.close()


def test_the_gate_ignores_slots_not_heard_from_and_withdrawn() -> None:
    now = [10**12]
    gate = listeners.AcceptGate(3, clock=lambda: now[0])
    gate.publish(1, 0)
    assert not gate.may_accept(0, 5)  # slot 1 is live with fewer
    now[0] += int(listeners.STALE_SECONDS * 1e9) + 1
    assert gate.may_accept(0, 5)  # slot 1 went silent (died): left out
    gate.publish(2, 1)
    gate.withdraw(2)
    assert gate.may_accept(0, 5)  # slot 2 stopped accepting


class Holder(asyncio.Protocol):
    """Keeps each connection it is given, and says ``hi``."""

    def __init__(self, kept: list[asyncio.BaseTransport]) -> None:
        self.kept = kept

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.kept.append(transport)
        transport.write(b"hi")  # type: ignore[attr-defined]


def serve_with_a_silent_rival(rival_count: int, rival_keeps_publishing: bool) -> int:
    """Slot 0's acceptor, with slot 1 publishing ``rival_count`` but never accepting: how many
    of 3 connections slot 0 served (each client waits for its ``hi``)."""
    listener = listeners.bind(ListenConfig(protocol="policy", address=f"127.0.0.1:{free_port()}"), 2)
    gate: listeners.AcceptGate = getattr(listener.for_slot(0), "gate")
    kept: list[asyncio.BaseTransport] = []
    counts: Counter[tuple[str, ...]] = Counter()

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        acceptor = listeners.Acceptor(loop, listener.for_slot(0), lambda: Holder(kept), counts,
                                      open_count=lambda: len(kept) + 5, label="policy")
        gate.publish(1, rival_count)
        acceptor.start()
        writers = []
        try:
            for _ in range(3):
                reader, writer = await asyncio.open_connection(*listener.for_slot(0).getsockname())
                writers.append(writer)
                while not reader.at_eof() and rival_keeps_publishing and not kept[len(writers) - 1:]:
                    gate.publish(1, rival_count)  # alive and less loaded, yet taking nothing
                    await asyncio.sleep(0.001)
                assert await asyncio.wait_for(reader.readexactly(2), 20.0) == b"hi"
        finally:
            for writer in writers:
                writer.close()
            acceptor.close()
            for transport in kept:
                transport.close()
        return len(kept)

    try:
        return run(scenario())
    finally:
        listener.close()
        assert counts[("accept_wakeups", "policy", "deferred")] >= 1


def test_a_stale_low_count_does_not_stall_accepting() -> None:
    """A worker that died (or stalls) with fewer connections published: the other waits for
    it a bounded time, then takes the connection."""
    assert serve_with_a_silent_rival(0, rival_keeps_publishing=False) == 3


def test_a_live_rival_that_takes_nothing_delays_a_connection_only_a_bounded_number_of_times() -> None:
    assert serve_with_a_silent_rival(0, rival_keeps_publishing=True) == 3


def test_a_stale_high_count_does_not_hold_a_worker_back() -> None:
    listener = listeners.bind(ListenConfig(protocol="policy", address=f"127.0.0.1:{free_port()}"), 2)
    gate: listeners.AcceptGate = getattr(listener.for_slot(0), "gate")
    kept: list[asyncio.BaseTransport] = []
    counts: Counter[tuple[str, ...]] = Counter()

    async def scenario() -> None:
        acceptor = listeners.Acceptor(asyncio.get_running_loop(), listener.for_slot(0), lambda: Holder(kept),
                                      counts, open_count=lambda: len(kept), label="policy")
        gate.publish(1, 1000)
        acceptor.start()
        clients = [socket.create_connection(listener.for_slot(0).getsockname()) for _ in range(4)]
        try:
            await poll(lambda: len(kept) == 4, "the connections to be taken")
        finally:
            for client in clients:
                client.close()
            acceptor.close()
            for transport in kept:
                transport.close()

    try:
        run(scenario())
    finally:
        listener.close()
    assert counts[("accept_wakeups", "policy", "deferred")] == 0
