"""The accept gate: one listening socket polled by every worker, each taking a new connection
only when no live worker has fewer (issue 15)."""
from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid import config
from checkid.config import ListenConfig
from checkid.errors import ConfigError
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
                deadline = loop.time() + 20.0
                while not reader.at_eof() and rival_keeps_publishing and not kept[len(writers) - 1:]:
                    assert loop.time() < deadline, "timed out waiting for the connection to be taken"
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
        served = run(scenario())
    finally:
        listener.close()
    assert counts[("accept_wakeups", "policy", "deferred")] >= 1
    return served


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


class HighSocket(socket.socket):
    """A listener's descriptor for a slot at a descriptor number past select()'s 1024, as a
    worker of many slots and listeners holds them."""

    def __init__(self, shared: socket.socket, gate: listeners.AcceptGate, slot: int, fd: int) -> None:
        os.dup2(shared.fileno(), fd)
        super().__init__(shared.family, shared.type, shared.proto, fd)
        self.setblocking(False)
        self.gate = gate
        self.slot = slot


def free_descriptor_above(low: int) -> int:
    for fd in range(low, low + 4096):
        try:
            os.fstat(fd)
        except OSError:
            return fd
    raise AssertionError(f"no free descriptor number above {low}")


def test_an_acceptor_on_a_descriptor_past_1024_takes_the_connection_it_deferred() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    listener = listeners.bind(ListenConfig(protocol="policy", address=f"127.0.0.1:{free_port()}"), 2)
    gate: listeners.AcceptGate = getattr(listener.for_slot(0), "gate")
    sock = HighSocket(listener.for_slot(0), gate, 0, free_descriptor_above(1500))
    kept: list[asyncio.BaseTransport] = []
    counts: Counter[tuple[str, ...]] = Counter()

    async def scenario() -> None:
        acceptor = listeners.Acceptor(asyncio.get_running_loop(), sock, lambda: Holder(kept), counts,
                                      open_count=lambda: len(kept) + 5, label="policy")
        gate.publish(1, 0)  # a less-loaded rival, which then goes silent: the acceptor defers
        acceptor.start()
        client = socket.create_connection(sock.getsockname())
        try:
            await poll(lambda: len(kept) == 1, "the deferred connection to be taken")
        finally:
            client.close()
            acceptor.close()
            for transport in kept:
                transport.close()

    try:
        run(scenario())
    finally:
        sock.close()
        listener.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert counts[("accept_wakeups", "policy", "deferred")] == 1


class Clock:
    """A gate clock that moves only when told, and counts how often it was read (each of the
    acceptor's looks at the gate reads it)."""

    def __init__(self) -> None:
        self.now = 10**12
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


def gated_slot(clock: Clock, slots: int = 2) -> tuple[listeners.Listener, listeners.AcceptGate]:
    listener = listeners.bind(ListenConfig(protocol="policy", address=f"127.0.0.1:{free_port()}"), slots)
    gate: listeners.AcceptGate = getattr(listener.for_slot(0), "gate")
    gate.clock = clock
    return listener, gate


async def looked_again(clock: Clock, times: int = 3) -> None:
    """Until the deferring acceptor has looked at the gate ``times`` more times."""
    reads = clock.reads
    await poll(lambda: clock.reads >= reads + times, "the acceptor to look at the gate again")


def test_each_connection_waits_its_own_accept_wait_after_another_worker_takes_the_one_before() -> None:
    """The bound on the wait is per connection: when the less-loaded worker takes the first
    of two waiting connections just before the bound, the second is left to it afresh."""
    clock = Clock()
    listener, gate = gated_slot(clock)
    rival = listener.for_slot(1)
    kept: list[asyncio.BaseTransport] = []
    counts: Counter[tuple[str, ...]] = Counter()

    async def scenario() -> None:
        acceptor = listeners.Acceptor(asyncio.get_running_loop(), listener.for_slot(0), lambda: Holder(kept),
                                      counts, open_count=lambda: len(kept) + 5, label="policy", accept_wait=1.0)
        gate.publish(1, 0)
        clients = [socket.create_connection(rival.getsockname()) for _ in range(2)]
        taken: list[socket.socket] = []
        acceptor.start()
        try:
            await looked_again(clock)
            clock.advance(0.9)
            gate.publish(1, 0)  # the rival is live, and less loaded
            await looked_again(clock)
            assert not kept
            conn, _ = rival.accept()  # the rival takes the first connection
            taken.append(conn)
            gate.took(1)
            gate.publish(1, 1)
            await looked_again(clock)
            clock.advance(0.5)  # 1.4 s after the first deferral, 0.5 s after the rival took one
            gate.publish(1, 1)
            await looked_again(clock)
            assert not kept  # the second connection waits its own second
            clock.advance(0.6)
            await poll(lambda: len(kept) == 1, "the second connection to be taken")
        finally:
            for c in clients + taken:
                c.close()
            acceptor.close()
            for transport in kept:
                transport.close()

    try:
        run(scenario())
    finally:
        listener.close()


def test_a_deferral_pending_when_accepting_pauses_for_resources_does_not_end_the_pause() -> None:
    clock = Clock()
    listener, gate = gated_slot(clock)
    kept: list[asyncio.BaseTransport] = []
    counts: Counter[tuple[str, ...]] = Counter()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        acceptor = listeners.Acceptor(loop, listener.for_slot(0), lambda: Holder(kept), counts, retry=3600.0,
                                      open_count=lambda: len(kept) + 5, label="policy")
        gate.publish(1, 0)
        client = socket.create_connection(listener.for_slot(0).getsockname())
        acceptor.start()
        try:
            await poll(lambda: counts[("accept_wakeups", "policy", "deferred")] == 1, "the acceptor to defer")
            # a connection being handed over fails for want of descriptors, while deferring
            acceptor._out_of_resources("EMFILE", OSError(errno.EMFILE, "Too many open files"))
            clock.advance(1.0)  # past any wait: were it accepting, it would take the connection
            gate.publish(1, 0)
            reads = clock.reads
            # timers run in order of their deadlines: this one runs after the deferral's would
            await asyncio.sleep(listeners.DEFER_SECONDS * 5)
            assert not kept and clock.reads == reads  # still paused: the gate not even looked at
        finally:
            client.close()
            acceptor.close()
            for transport in kept:
                transport.close()

    try:
        run(scenario())
    finally:
        listener.close()
    assert counts[("accept_errors", "EMFILE")] == 1


def test_starting_an_acceptor_cancels_its_pending_resume() -> None:
    listener = listeners.bind(ListenConfig(protocol="policy", address=f"127.0.0.1:{free_port()}"), 1)
    counts: Counter[tuple[str, ...]] = Counter()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        acceptor = listeners.Acceptor(loop, listener.for_slot(0), asyncio.Protocol, counts, retry=3600.0)
        acceptor.start()
        acceptor._out_of_resources("EMFILE", OSError(errno.EMFILE, "Too many open files"))
        resume = acceptor._resume
        assert resume is not None and not resume.cancelled()
        acceptor.start()  # resumed early: the pending resume must not outlive it
        assert resume.cancelled()
        acceptor.close()

    try:
        run(scenario())
    finally:
        listener.close()


def test_a_retiring_worker_does_not_withdraw_the_entry_its_replacement_wrote() -> None:
    """During a reload the old and the new worker of a slot overlap: the old one stopping
    must leave the new one's entry, or the others stop waiting for it."""
    clock = Clock()
    listener, gate = gated_slot(clock)
    counts: Counter[tuple[str, ...]] = Counter()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        retiring = listeners.Acceptor(loop, listener.for_slot(1), asyncio.Protocol, counts,
                                      open_count=lambda: 7)
        retiring.start()
        clock.advance(0.001)
        replacement = listeners.Acceptor(loop, listener.for_slot(1), asyncio.Protocol, counts,
                                         open_count=lambda: 0)
        replacement.start()
        retiring.close()
        try:
            assert gate.others(0) == [0]  # the replacement's entry, live
            replacement.close()
            assert gate.others(0) == []  # its own withdrawal does clear it
        finally:
            replacement.close()

    try:
        run(scenario())
    finally:
        listener.close()


def test_accept_wait_0_turns_the_gate_off() -> None:
    listener = listeners.bind(ListenConfig(protocol="policy", address=f"127.0.0.1:{free_port()}"), 2)
    gate: listeners.AcceptGate = getattr(listener.for_slot(0), "gate")
    kept: list[asyncio.BaseTransport] = []
    counts: Counter[tuple[str, ...]] = Counter()

    async def scenario() -> None:
        acceptor = listeners.Acceptor(asyncio.get_running_loop(), listener.for_slot(0), lambda: Holder(kept),
                                      counts, open_count=lambda: len(kept) + 5, label="policy", accept_wait=0)
        gate.publish(1, 0)
        acceptor.start()
        clients = [socket.create_connection(listener.for_slot(0).getsockname()) for _ in range(3)]
        try:
            await poll(lambda: len(kept) == 3, "the connections to be taken")
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


@pytest.mark.parametrize("text, expected", [("", 0.1), ("accept_wait = 30\n", 30.0), ("accept_wait = 0\n", 0.0)])
def test_accept_wait_is_an_operator_setting(tmp_path: Path, text: str, expected: float) -> None:
    f = tmp_path / "checkid.toml"
    f.write_text("[server]\n" + text)
    assert config.load(f).server.accept_wait == expected


def test_a_negative_accept_wait_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "checkid.toml"
    f.write_text("[server]\naccept_wait = -0.1\n")
    with pytest.raises(ConfigError, match="server.accept_wait: must be 0"):
        config.load(f)
