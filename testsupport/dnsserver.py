"""A small authoritative DNS server for tests and benchmarks, on loopback only.

It serves every RFC 1035 zone file of a folder (``<origin>.zone``, or ``$ORIGIN`` inside)
over UDP and TCP on one port, follows CNAMEs across its zones like a recursive server
would for a stub client (a loop is answered with its chain, NOERROR), answers
NXDOMAIN/NODATA with the zone's SOA (RFC 2308), and REFUSED for names outside its zones,
so nothing leaves the machine.

Faults are injected per name: ``delay`` (seconds before answering), ``drop`` (never
answer: a timeout), ``servfail`` and ``truncate`` (TC bit over UDP, so the client retries
over TCP). ``rtt`` delays every answer, to model the Internet behind a cache miss.
``queries`` counts what was asked, so tests can prove what a cache saved; a process
outside can read the total with a CHAOS-class TXT query for ``queries.server.`` (not counted),
as ``dig @127.0.0.1 -p PORT CH TXT queries.server`` or :func:`queries_asked`.

Run standalone: ``python -m testsupport.dnsserver --zones testsupport/zones --port 5353``.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Fault:
    delay: float = 0.0
    drop: bool = False
    servfail: bool = False
    truncate: bool = False


class Zones:
    """The zone data and the lookup logic, with no I/O."""

    def __init__(self, folder: str | Path | None = None) -> None:
        """Every zone file of ``folder``; none without one (add zones with :meth:`add_zone`)."""
        self.zones: dict[dns.name.Name, dns.zone.Zone] = {}
        self._names: dict[dns.name.Name, set[dns.name.Name]] = {}
        for path in sorted(Path(folder).glob("*.zone")) if folder is not None else ():
            self.add_file(path)

    def add_file(self, path: Path) -> None:
        origin = dns.name.from_text(path.stem)
        zone = dns.zone.from_file(str(path), origin=origin, relativize=False, check_origin=True)
        self.add_zone(zone)

    def add_zone(self, zone: dns.zone.Zone) -> None:
        origin = zone.origin
        assert origin is not None
        self.zones[origin] = zone
        names: set[dns.name.Name] = set()
        for name in zone.nodes:
            while name.is_subdomain(origin) and name not in names:
                names.add(name)
                name = name.parent()
        self._names[origin] = names

    def _zone_for(self, name: dns.name.Name) -> dns.zone.Zone | None:
        best = None
        for origin, zone in self.zones.items():
            if name.is_subdomain(origin) and (best is None or len(origin) > len(best.origin)):
                best = zone
        return best

    def resolve(self, qname: dns.name.Name, qtype: int) -> tuple[int, list[dns.rrset.RRset], list[dns.rrset.RRset]]:
        """``(rcode, answer, authority)`` for one question."""
        answer: list[dns.rrset.RRset] = []
        name = qname
        seen = {qname}
        for _ in range(12):  # CNAME chain bound
            zone = self._zone_for(name)
            if zone is None:
                return (dns.rcode.NOERROR if answer else dns.rcode.REFUSED), answer, []
            node = zone.get_node(name) or self._wildcard(zone, name)
            soa = self._soa(zone)
            if node is None:
                exists = name in self._names[zone.origin]
                return (dns.rcode.NOERROR if exists else dns.rcode.NXDOMAIN), answer, [soa]
            rdataset = node.get_rdataset(dns.rdataclass.IN, qtype)
            if rdataset is not None:
                answer.append(_rrset(name, rdataset))
                return dns.rcode.NOERROR, answer, []
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None:
                return dns.rcode.NOERROR, answer, [soa]
            answer.append(_rrset(name, cname))
            name = cname[0].target
            if name in seen:  # a CNAME loop: the chain up to where it closes, as BIND answers
                return dns.rcode.NOERROR, answer, []
            seen.add(name)
        return dns.rcode.SERVFAIL, [], []

    def _wildcard(self, zone: dns.zone.Zone, name: dns.name.Name) -> dns.node.Node | None:
        if name in self._names[zone.origin]:
            return None  # an existing name is never matched by a wildcard (RFC 4592)
        parent = name.parent()
        while parent.is_subdomain(zone.origin):
            node = zone.get_node(dns.name.Name((b"*",) + parent.labels))
            if node is not None:
                return node
            if parent in self._names[zone.origin] or parent == zone.origin:
                return None
            parent = parent.parent()
        return None

    @staticmethod
    def _soa(zone: dns.zone.Zone) -> dns.rrset.RRset:
        assert zone.origin is not None
        return _rrset(zone.origin, zone.find_rdataset(zone.origin, dns.rdatatype.SOA))


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
    rrset.update(rdataset)
    return rrset


class TestDnsServer:
    """The server, run in a background thread with its own event loop."""

    __test__ = False  # not a pytest test class

    def __init__(self, zones: str | Path | Zones, host: str = LOOPBACK, port: int = 0, rtt: float = 0.0) -> None:
        self.zones = zones if isinstance(zones, Zones) else Zones(zones)
        #: seconds added before every answer
        self.rtt = rtt
        self.host = host
        self.port = port
        self.faults: dict[str, Fault] = {}
        self.queries: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    # -- control, from any thread ------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.queries.values())

    def count(self, name: str, rdtype: str | None = None) -> int:
        name = name.lower().rstrip(".")
        with self._lock:
            return sum(n for (qn, qt), n in self.queries.items() if qn == name and rdtype in (None, qt))

    def reset_counts(self) -> None:
        with self._lock:
            self.queries.clear()

    def set_fault(self, name: str, **kwargs: float | bool) -> None:
        self.faults[name.lower().rstrip(".")] = Fault(**kwargs)  # type: ignore[arg-type]

    def clear_faults(self) -> None:
        self.faults.clear()

    def start(self) -> "TestDnsServer":
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as e:  # reported to start()
                errors.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_until_complete(self._serve())
            loop.close()

        self._thread = threading.Thread(target=run, name="test-dns", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> "TestDnsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving, inside the server thread ---------------------------------------
    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        for _ in range(20):
            udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp_sock.bind((self.host, self.port))
            port = udp_sock.getsockname()[1]
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, self.host, port)
            except OSError:
                udp_sock.close()
                if self.port:
                    raise
                continue
            self.port = port
            break
        else:
            raise OSError("no free port for UDP and TCP together")
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp_sock)

    async def _serve(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()
        self._udp.close()
        self._tcp.close()
        await self._tcp.wait_closed()

    def respond(self, wire: bytes, udp: bool) -> tuple[bytes | None, float]:
        """The reply to one query (None: drop it) and the delay before sending it."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None, 0.0
        if not query.question:
            return None, 0.0
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        if q.rdclass == dns.rdataclass.CH:
            return self._chaos(query, name, q.rdtype), 0.0
        with self._lock:
            self.queries[(name, dns.rdatatype.to_text(q.rdtype))] += 1
        fault = self.faults.get(name, _NO_FAULT)
        if fault.drop:
            return None, 0.0
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if fault.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif fault.truncate and udp:
            response.flags |= dns.flags.TC
        else:
            rcode, answer, authority = self.zones.resolve(q.name, q.rdtype)
            response.set_rcode(rcode)
            if rcode == dns.rcode.REFUSED:
                response.flags &= ~dns.flags.AA
            response.answer.extend(answer)
            response.authority.extend(authority)
        limit = max(512, query.payload) if udp else 65535
        try:
            out = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.authority.clear()
            response.flags |= dns.flags.TC
            out = response.to_wire()
        return out, fault.delay + self.rtt

    def _chaos(self, query: dns.message.Message, name: str, rdtype: int) -> bytes:
        response = dns.message.make_response(query)
        if name == "queries.server" and rdtype == dns.rdatatype.TXT:
            response.answer.append(dns.rrset.from_text(query.question[0].name, 0, "CH", "TXT", f'"{self.total}"'))
        else:
            response.set_rcode(dns.rcode.REFUSED)
        return response.to_wire()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                wire = await reader.readexactly(length)
                out, delay = self.respond(wire, udp=False)
                if out is None:
                    continue
                if delay:
                    await asyncio.sleep(delay)
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


_NO_FAULT = Fault()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: TestDnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        out, delay = self.server.respond(data, udp=True)
        if out is None or self.transport is None:
            return
        if delay:
            asyncio.get_running_loop().call_later(delay, self._send, out, addr)
        else:
            self.transport.sendto(out, addr)

    def _send(self, out: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)


def queries_asked(address: str) -> int:
    """The total query count of a test DNS server at ``host:port`` (its CHAOS TXT answer)."""
    import dns.query
    host, _, port = address.rpartition(":")
    query = dns.message.make_query("queries.server.", "TXT", "CH")
    response = dns.query.udp(query, host, timeout=5, port=int(port))
    return int(response.answer[0][0].strings[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zones", default=str(Path(__file__).parent / "zones"))
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rtt", type=float, default=0.0, help="seconds added before every answer")
    parser.add_argument("--faults", help="JSON file: a list of names never answered")
    args = parser.parse_args()
    server = TestDnsServer(args.zones, args.host, args.port, args.rtt).start()
    if args.faults:
        import json
        for name in json.loads(Path(args.faults).read_text()):
            server.set_fault(name, drop=True)
    print(f"serving {len(server.zones.zones)} zones on {server.address}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
