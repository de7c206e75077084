"""The persistent UDP transport: answers matched by source, id and question; truncation left to
TCP; an unreachable server failing every query at once; socket rotation; bounded queries."""
from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rrset
import pytest

from checkid.config import DnsConfig
from checkid.engine.dns import transport as transport_module
from checkid.engine.dns.cache import MemoryCache
from checkid.engine.dns.client import DnsClient, Outcome
from checkid.engine.dns.transport import UdpTransport
from tests.conftest import run

#: what a fake server does with one query: the datagrams to send back, in order
Script = Callable[[dns.message.Message, tuple[str, int]], list[bytes]]


class FakeServer(asyncio.DatagramProtocol):
    """A UDP server on loopback, in the test's loop, answering as its script says."""

    def __init__(self, script: Script, delay: float = 0.0) -> None:
        self.script = script
        self.delay = delay
        self.sources: list[tuple[str, int]] = []
        self.ids: list[int] = []
        self.outstanding = 0
        self.most_outstanding = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        self.sources.append(addr)
        self.ids.append(query.id)
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        replies = self.script(query, addr)
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._send, replies, addr)
        else:
            self._send(replies, addr)

    def _send(self, replies: list[bytes], addr: tuple[str, int]) -> None:
        self.outstanding -= 1
        assert self.transport is not None
        for reply in replies:
            self.transport.sendto(reply, addr)

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


async def serve(script: Script, delay: float = 0.0) -> FakeServer:
    server = FakeServer(script, delay)
    await asyncio.get_running_loop().create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
    return server


def txt_answer(query: dns.message.Message, text: str, name: str | None = None) -> dns.message.Message:
    response = dns.message.make_response(query)
    qname = name or query.question[0].name.to_text()
    if name is not None:  # another question
        response.question = [dns.rrset.RRset(dns.name.from_text(name), query.question[0].rdclass,
                                             query.question[0].rdtype)]
    response.answer.append(dns.rrset.from_text(qname, 300, "IN", "TXT", f'"{text}"'))
    return response


def honest(query: dns.message.Message, _addr: tuple[str, int]) -> list[bytes]:
    return [txt_answer(query, "real").to_wire()]


def strings(response: dns.message.Message) -> list[bytes]:
    return [s for rrset in response.answer for rd in rrset for s in rd.strings]


def test_transport_ignores_wrong_ids_questions_and_garbage_and_takes_the_real_answer():
    def spoofing(query: dns.message.Message, addr: tuple[str, int]) -> list[bytes]:
        wrong_id = txt_answer(query, "spoofed id")
        wrong_id.id = (query.id + 1) % 65536
        truncated_other = txt_answer(query, "spoofed tc", name="other.example.")
        truncated_other.flags |= dns.flags.TC
        return [wrong_id.to_wire(), txt_answer(query, "spoofed question", name="other.example.").to_wire(),
                query.id.to_bytes(2, "big") + b"\x81\x80garbage!!", truncated_other.to_wire(),
                txt_answer(query, "real").to_wire()]

    async def ask() -> tuple[dns.message.Message, Counter[tuple[str, ...]]]:
        server = await serve(spoofing)
        counts: Counter[tuple[str, ...]] = Counter()
        transport = UdpTransport(counts)
        try:
            response = await transport.query(dns.message.make_query("asked.example.", "TXT"), "127.0.0.1",
                                              server.port, 2.0)
        finally:
            transport.close()
            server.close()
        return response, counts

    response, counts = run(ask())
    assert strings(response) == [b"real"]
    assert counts[("dns_answers_ignored", "id")] == 1
    assert counts[("dns_answers_ignored", "question")] == 2  # one of them truncated: no TCP retry
    assert counts[("dns_answers_ignored", "malformed")] == 1


def test_transport_takes_no_answer_from_another_source():
    async def ask() -> dns.message.Message:
        spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        spoofer.bind(("127.0.0.1", 0))

        def from_elsewhere(query: dns.message.Message, addr: tuple[str, int]) -> list[bytes]:
            # a perfect answer (right id and question) from the wrong port comes first
            spoofer.sendto(txt_answer(query, "spoofed").to_wire(), addr)
            return [txt_answer(query, "real").to_wire()]

        server = await serve(from_elsewhere, delay=0.05)
        transport = UdpTransport(Counter())
        try:
            return await transport.query(dns.message.make_query("asked.example.", "TXT"), "127.0.0.1",
                                         server.port, 2.0)
        finally:
            transport.close()
            server.close()
            spoofer.close()

    assert strings(run(ask())) == [b"real"]


def test_transport_raises_truncated_for_a_real_truncated_answer():
    def truncating(query: dns.message.Message, _addr: tuple[str, int]) -> list[bytes]:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.TC
        return [response.to_wire()]

    async def ask() -> None:
        server = await serve(truncating)
        transport = UdpTransport(Counter())
        try:
            await transport.query(dns.message.make_query("asked.example.", "TXT"), "127.0.0.1", server.port, 2.0)
        finally:
            transport.close()
            server.close()

    with pytest.raises(dns.message.Truncated):
        run(ask())


def test_truncated_answer_is_retried_over_tcp_through_the_client(dns):
    dns.set_fault("example.com", truncate=True)
    c = DnsClient(DnsConfig(nameservers=(dns.address,), timeout=2.0), MemoryCache(100))
    answer = run(c.resolve("example.com", "TXT"))
    assert answer.outcome is Outcome.ANSWER and answer.records == ((b"v=spf1 ip4:192.0.2.0/24 -all",),)
    assert dns.count("example.com", "TXT") == 2  # UDP (truncated), then TCP


def test_transport_times_out_and_forgets_the_query():
    async def ask() -> int:
        server = await serve(lambda _q, _a: [])
        transport = UdpTransport(Counter())
        try:
            with pytest.raises(dns.exception.Timeout):
                await transport.query(dns.message.make_query("asked.example.", "TXT"), "127.0.0.1",
                                      server.port, 0.05)
            return sum(len(s.pending) for pool in transport._pools.values() for s in pool.sockets if s)
        finally:
            transport.close()
            server.close()

    assert run(ask()) == 0


def closed_udp_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_a_closed_port_fails_every_concurrent_query_over_at_once(dns):
    # a try's timeout is 2 s: any query that waited for it instead of its ICMP error would not
    # be counted unreachable
    c = DnsClient(DnsConfig(nameservers=(closed_udp_port(), dns.address), timeout=4.0), MemoryCache(100))

    async def many() -> list[Outcome]:
        answers = await asyncio.gather(*(c.resolve(f"n{i}.example.com", "A") for i in range(12)))
        return [a.outcome for a in answers]

    assert run(many()) == [Outcome.NXDOMAIN] * 12
    assert c.counts[("dns_unreachable",)] == 12


def test_a_closed_port_fails_over_at_once_again_and_again():
    """libuv stops polling a socket that reported an error: a socket kept after an ICMP
    unreachable went deaf, and the next query sent on it (the fifth, after a turn of the four)
    waited out its timeout. Each query in turn must get its own unreachable, not a timeout."""
    c = DnsClient(DnsConfig(nameservers=(closed_udp_port(),), timeout=4.0), MemoryCache(100))

    async def one_by_one() -> list[Outcome]:
        return [(await c.resolve(f"s{i}.example.com", "A")).outcome for i in range(12)]

    assert run(one_by_one()) == [Outcome.SERVFAIL] * 12
    assert c.counts[("dns_unreachable",)] == 12


def test_transport_rotates_source_ports(monkeypatch):
    monkeypatch.setattr(transport_module, "QUERIES_PER_SOCKET", 2)

    async def ask() -> tuple[FakeServer, int]:
        server = await serve(honest)
        transport = UdpTransport(Counter())
        try:
            for n in range(3 * transport_module.SOCKETS_PER_SERVER * 2):
                await transport.query(dns.message.make_query(f"q{n}.example.", "TXT"), "127.0.0.1", server.port, 2.0)
            pool = next(iter(transport._pools.values()))
            return server, len(pool.sockets) + len(pool.draining)
        finally:
            transport.close()
            server.close()

    server, open_sockets = run(ask())
    ports = {port for _, port in server.sources}
    assert len(ports) == 3 * transport_module.SOCKETS_PER_SERVER  # each socket sent 2, then a fresh one
    assert open_sockets == transport_module.SOCKETS_PER_SERVER
    assert len(set(server.ids)) > len(server.ids) // 2  # random ids, not a counter from 0
    assert server.ids != sorted(server.ids)


def test_transport_bounds_the_queries_outstanding_to_one_server(monkeypatch):
    monkeypatch.setattr(transport_module, "MAX_OUTSTANDING", 2)

    async def ask() -> tuple[FakeServer, list[dns.message.Message]]:
        server = await serve(honest, delay=0.02)
        transport = UdpTransport(Counter())
        try:
            answers = await asyncio.gather(*(
                transport.query(dns.message.make_query(f"q{n}.example.", "TXT"), "127.0.0.1", server.port, 5.0)
                for n in range(6)))
            return server, answers
        finally:
            transport.close()
            server.close()

    server, answers = run(ask())
    assert [strings(a) for a in answers] == [[b"real"]] * 6
    assert server.most_outstanding == 2


def test_transport_follows_a_new_loop():
    counts: Counter[tuple[str, ...]] = Counter()
    transport = UdpTransport(counts)

    async def ask() -> list[bytes]:
        server = await serve(honest)
        try:
            return strings(await transport.query(dns.message.make_query("asked.example.", "TXT"), "127.0.0.1",
                                                 server.port, 2.0))
        finally:
            server.close()

    assert run(ask()) == [b"real"]
    assert run(ask()) == [b"real"]  # the first loop's sockets were closed with it, new ones opened
    transport.close()
