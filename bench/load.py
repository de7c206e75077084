"""The load generator: drives one checkid front-end with the workload's trace.

    .venv/bin/python -m bench.load --protocol policy --port 10030 [--connections 4]
        [--seconds 10] [--requests N] [--rate R] [--dns 127.0.0.1:5353]
        [--senders 500 --trace 20000 --seed 1]

It writes the trace (bench/workload.py, from the seed) in the front-end's wire format and
runs a compiled client (bench/c/) as its own process: ``policy`` and ``msgpack-rpc`` with
one request in flight per connection, as Postfix's smtpd processes ask; ``milter`` plays
whole SMTP sessions (negotiate … end of message … quit), a new connection each, as an MTA
does. Bounded by ``--seconds`` and ``--requests``; loopback only. It prints decisions/s,
latency p50/p90/p99/p99.9, errors and, given the test DNS server's address (``--dns``), the
upstream DNS queries per decision (the server's own count, read before and after).
``--rate`` paces the offered load; latencies are then taken from each request's scheduled
time, so a stall counts against every request it delays.
"""
from __future__ import annotations

import argparse
import json
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import msgpack

from bench.workload import Request, Workload
from checkid.protocols.milter import codec as milter_codec
from checkid.protocols.milter.events import (Body, Command, Connect, Data, EndOfHeaders, EndOfMessage, HeaderField, Helo, Mail,
                                             OptNeg, Quit, Rcpt)
from checkid.protocols.postfix_policy.codec import encode_request
from testsupport.dnsserver import queries_asked

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".bench-build"
PROTOCOLS = ("policy", "msgpack-rpc", "milter")


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    #: latency percentiles, seconds
    p50: float
    p90: float
    p99: float
    p999: float
    #: upstream DNS queries during the run, when the DNS server was given
    dns_queries: int | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def queries_per_decision(self) -> float | None:
        return None if self.dns_queries is None or not self.requests else self.dns_queries / self.requests

    def summary(self) -> str:
        dns = "" if self.queries_per_decision is None else f", {self.queries_per_decision:.3f} DNS queries/decision"
        return (f"{self.requests} in {self.seconds:.1f} s: {self.rate:,.0f}/s, p50 {self.p50 * 1e3:.2f} ms, "
                f"p90 {self.p90 * 1e3:.2f} ms, p99 {self.p99 * 1e3:.2f} ms, p99.9 {self.p999 * 1e3:.2f} ms, "
                f"{self.errors} errors{dns}")


def client(protocol: str) -> Path:
    """The compiled client for ``protocol``, built (once per source change) under .bench-build/."""
    name = "miltersessions" if protocol == "milter" else "loadclient"
    source = ROOT / "bench" / "c" / f"{name}.c"
    binary = BUILD / name
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


def policy_request(r: Request, n: int) -> bytes:
    return encode_request({
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": r.ip, "client_name": "unknown", "helo_name": r.helo, "sender": r.sender,
        "recipient": r.rcpt, "instance": f"b{r.message}", "queue_id": "", "recipient_count": "0",
    })


def msgpack_request(r: Request, n: int) -> bytes:
    return msgpack.packb([0, n & 0x7FFFFFFF, "checkID", [r.ip, None, r.helo, r.sender, [r.rcpt]]])


def milter_session(r: Request, more: Iterable[Request] = ()) -> list[bytes]:
    """One whole session for the message of ``r``: an RCPT for it and each of ``more``
    (the message's other recipients)."""
    rcpts: list[Command] = [Rcpt((f"<{x.rcpt}>",)) for x in (r, *more)]
    cmds = [OptNeg(6, 0x1FF, 0x1FFFFF), Connect(r.helo, "4", 25, r.ip), Helo(r.helo), Mail((f"<{r.sender}>",)),
            *rcpts, Data(), HeaderField("From", r.sender), HeaderField("To", r.rcpt),
            HeaderField("Subject", "bench"), EndOfHeaders(), Body(b"hello\r\n" * 20), EndOfMessage(), Quit()]
    return [milter_codec.encode_command(c) for c in cmds]


def messages(requests: Iterable[Request]) -> Iterator[list[Request]]:
    """The requests grouped by message (consecutive requests sharing ``message``)."""
    group: list[Request] = []
    for r in requests:
        if group and r.message != group[0].message:
            yield group
            group = []
        group.append(r)
    if group:
        yield group


def write_trace(protocol: str, requests: Iterable[Request], path: Path) -> Path:
    """The requests in the client's file format: u32-length records (a milter session is a
    u32 packet count, then u32-length packets). Policy and MessagePack-RPC: a record per
    request (per recipient, as Postfix asks at RCPT time); milter: a session per message."""
    with open(path, "wb") as f:
        if protocol == "milter":
            for group in messages(requests):
                packets = milter_session(group[0], group[1:])
                f.write(struct.pack("!I", len(packets)))
                for packet in packets:
                    f.write(struct.pack("!I", len(packet)) + packet)
            return path
        for n, r in enumerate(requests):
            record = policy_request(r, n) if protocol == "policy" else msgpack_request(r, n)
            f.write(struct.pack("!I", len(record)) + record)
    return path


def run(protocol: str, port: int, trace: Path, connections: int = 4, seconds: float = 10.0, rate: float = 0.0,
        max_requests: int = 0, dns: str | None = None, unix: Path | None = None) -> Result:
    """Drive ``port`` (or, for the milter, the unix socket ``unix``) with ``trace`` (from
    :func:`write_trace`) and return what was measured."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
    if unix is not None and protocol != "milter":
        raise ValueError("only the milter client dials a unix socket")
    host = "127.0.0.1" if unix is None else f"unix:{unix}"
    args = [str(client(protocol)), host, str(port), str(connections), str(seconds)]
    if protocol == "milter":
        if rate:
            raise ValueError("the milter client plays sessions back to back; it takes no rate")
        args += [str(max_requests), str(trace)]
    else:
        args += [str(rate), str(max_requests), "msgpack" if protocol == "msgpack-rpc" else "policy", str(trace)]
    before = queries_asked(dns) if dns else None
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {out.stderr.strip()}")
    done, errors, elapsed, p50, p90, p99, p999 = out.stdout.split()
    queries = queries_asked(dns) - before if dns and before is not None else None
    return Result(int(done), int(errors), float(elapsed), int(p50) / 1e6, int(p90) / 1e6, int(p99) / 1e6,
                  int(p999) / 1e6, queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="policy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=0, help="stop after this many (0: only --seconds)")
    parser.add_argument("--rate", type=float, default=0.0, help="offered requests/s (0: as fast as answered)")
    parser.add_argument("--dns", help="the test DNS server's host:port, to count upstream queries")
    parser.add_argument("--senders", type=int, default=500)
    parser.add_argument("--trace", type=int, default=20_000, help="requests in the generated trace")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if args.connections < 1 or args.seconds <= 0:
        parser.error("--connections must be ≥ 1 and --seconds > 0")
    workload = Workload(args.senders, args.trace, args.seed)
    with tempfile.TemporaryDirectory(prefix="checkid-load-") as tmp:
        trace = write_trace(args.protocol, workload.requests, Path(tmp) / "trace.bin")
        result = run(args.protocol, args.port, trace, args.connections, args.seconds, args.rate, args.requests,
                     args.dns)
    print(json.dumps(asdict(result)) if args.json else result.summary())


if __name__ == "__main__":
    main()
