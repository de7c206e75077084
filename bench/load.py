"""A load generator for the policy protocol: C client processes, each with one persistent
connection and one request in flight (as Postfix's smtpd processes do), bounded in requests
and seconds. Loopback only.

    python -m bench.load --port 10030 --connections 4 --seconds 10
"""
from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import time
from dataclasses import dataclass

from checkid.protocols.postfix_policy import codec


@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> str:
        return (f"{self.requests} requests in {self.seconds:.1f} s: {self.rate:,.0f}/s, "
                f"p50 {self.percentile(50) * 1e3:.2f} ms, p99 {self.percentile(99) * 1e3:.2f} ms, "
                f"{self.errors} errors")


def request(ip: str, helo: str, n: int) -> bytes:
    return codec.encode_request({
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": ip, "helo_name": helo, "sender": f"bounce-{n}@{helo}",
        "recipient": "user@example.org", "instance": f"b.{n}", "queue_id": "",
    })


def _client(port: int, requests: list[bytes], seconds: float, max_requests: int, start: float,
            out: "multiprocessing.Queue[tuple[int, int, list[float], float]]") -> None:
    latencies: list[float] = []
    done = errors = 0
    while time.time() < start:
        time.sleep(0.001)
    t0 = time.perf_counter()
    end = t0 + seconds
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    i = 0
    while done < max_requests and time.perf_counter() < end:
        data = requests[i % len(requests)]
        i += 1
        sent = time.perf_counter()
        try:
            sock.sendall(data)
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed")
                reply += chunk
        except OSError:
            errors += 1
            sock.close()
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            continue
        latencies.append(time.perf_counter() - sent)
        done += 1
    sock.close()
    out.put((done, errors, latencies, time.perf_counter() - t0))


def run(port: int, per_client: list[list[bytes]], seconds: float = 10.0, max_requests: int = 1_000_000) -> LoadResult:
    """Each list in ``per_client`` is one connection's request cycle; all start together."""
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[tuple[int, int, list[float], float]] = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_client, args=(port, reqs, seconds, max_requests, start, out))
             for reqs in per_client]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    return LoadResult(sum(r[0] for r in results), statistics.mean(r[3] for r in results),
                      sum(r[1] for r in results), [lat for r in results for lat in r[2]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--helo", default="example.com")
    parser.add_argument("--ip", default="192.0.2.1")
    args = parser.parse_args()
    reqs = [[request(args.ip, args.helo, n) for n in range(100)] for _ in range(args.connections)]
    print(run(args.port, reqs, args.seconds).summary())


if __name__ == "__main__":
    main()
