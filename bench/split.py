"""How a few long-lived connections spread over the workers (issue 15).

``checkid serve`` with 2 workers on the policy listener; for each connection count,
``--trials`` times: open that many persistent connections (as Postfix's smtpd processes hold
them), ask one request on each, then read how many each worker has open from its own
``checkid_open_connections`` gauge file (the metrics directory holds one per worker process;
/metrics shows only their sum), then close them all. Beside the measured spread this prints
the binomial one: what per-worker ``SO_REUSEPORT`` sockets give, the kernel hashing each
connection's 4-tuple to a worker whatever its load (checkid's listeners before issue 15;
now one shared socket and an accept gate, :mod:`checkid.runtime.listeners`).

``--herd`` instead forks ``--workers`` bare uvloop acceptors (a protocol that says ``hi`` and
holds the connection) on each way of listening: ``gate`` (checkid's), ``shared`` (one socket,
no gate) and ``reuseport`` (a socket per worker); for each it opens the persistent
connections, then ``--short`` connections one after another (connect, read, close), and
prints each worker's accepts, its wake-ups that found the queue empty (the thundering herd)
and its deferrals to a less-loaded worker.

    .venv/bin/python -m bench.split [--counts 4,16,64] [--trials 20] [--workers 2]
    .venv/bin/python -m bench.split --herd [--counts 16] [--short 500] [--workers 4]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import time
from collections import Counter
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

from bench.runtime import ZONES
from checkid.config import ListenConfig
from checkid.protocols.postfix_policy import codec as pol
from checkid.runtime import listeners
from testsupport.dnsserver import TestDnsServer, Zones
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir

REQUEST = pol.encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                              "client_address": "192.0.2.1", "helo_name": "example.com", "sender": "",
                              "recipient": "u@example.org", "instance": ""})


def open_by_worker(metrics_dir: Path) -> dict[int, int]:
    """Each worker's open connections (all front-ends), from its gauge file, by pid."""
    out: dict[int, int] = {}
    for path in metrics_dir.glob("gauge_livesum_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        total = 0.0
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[0] == "checkid_open_connections":
                total += value
        out[pid] = int(total)
    return out


def ask(sock: socket.socket) -> None:
    sock.sendall(REQUEST)
    data = b""
    while not data.endswith(b"\n\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed without a reply")
        data += chunk


def wait_total(metrics_dir: Path, total: int, seconds: float = 10.0) -> dict[int, int]:
    deadline = time.monotonic() + seconds
    while True:
        split = open_by_worker(metrics_dir)
        if sum(split.values()) == total or time.monotonic() > deadline:
            return split
        time.sleep(0.2)


def measure(counts: list[int], trials: int, workers: int) -> dict[int, list[list[int]]]:
    """Per connection count, each trial's connections per worker (sorted, largest first)."""
    out: dict[int, list[list[int]]] = {}
    workdir = world_readable_tmpdir("checkid-split-")
    port = free_port()
    with TestDnsServer(Zones(ZONES)) as server:
        toml = f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{port}"
[server]
workers = {workers}
state_dir = "{workdir / 'state'}"
log_level = "info"
[dns]
nameservers = ["{server.address}"]
"""
        with Checkid(toml, workdir, [port]) as checkid:
            # every worker polling first: the first to start would take a whole trial alone
            wait_until(lambda: len(re.findall(r"worker \d+ serving", checkid.log.read_text())) == workers,
                       "every worker serving", 30.0)
            metrics_dir = workdir / "state" / "metrics"
            for n in counts:
                out[n] = []
                for _ in range(trials):
                    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
                    for s in socks:
                        ask(s)
                    split = wait_total(metrics_dir, n)
                    out[n].append(sorted(split.values(), reverse=True) + [0] * (workers - len(split)))
                    for s in socks:
                        s.close()
                    wait_total(metrics_dir, 0)
    shutil.rmtree(workdir, ignore_errors=True)
    return out


def binomial_share(n: int) -> tuple[float, float]:
    """For 2 workers: the expected share of the busier one, and the chance it holds at
    least 5/7 of the connections (more than its capacity at 70 % of the pair's maximum)."""
    pmf = [math.comb(n, k) / 2 ** n for k in range(n + 1)]
    expected = sum(p * max(k, n - k) / n for k, p in enumerate(pmf))
    over = sum(p for k, p in enumerate(pmf) if max(k, n - k) / n > 5 / 7)
    return expected, over


def table(results: dict[int, list[list[int]]], workers: int) -> str:
    lines = ["| connections | trials | splits seen (busiest first) | busier worker's share: median, worst | "
             "binomial: expected share | trials over 5/7 (measured / binomial) |", "|---:|---:|---|---|---:|---:|"]
    for n, splits in results.items():
        shares = [s[0] / n for s in splits]
        seen = ", ".join(f"{'/'.join(map(str, s))}" for s in sorted(splits, reverse=True))
        expected, over = binomial_share(n) if workers == 2 else (float("nan"), float("nan"))
        measured_over = sum(1 for x in shares if x > 5 / 7) / len(shares)
        lines.append(f"| {n} | {len(splits)} | {seen} | {statistics.median(shares):.0%}, {max(shares):.0%} | "
                     f"{expected:.0%} | {measured_over:.0%} / {over:.0%} |")
    return "\n".join(lines)


class Holder(asyncio.Protocol):
    """Says ``hi`` and holds the connection until the client closes it."""

    def __init__(self, open_now: list[int]) -> None:
        self.open_now = open_now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.open_now[0] += 1
        transport.write(b"hi")  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.open_now[0] -= 1


async def _acceptor(sock: socket.socket) -> Counter[tuple[str, ...]]:
    loop = asyncio.get_running_loop()
    counts: Counter[tuple[str, ...]] = Counter()
    open_now = [0]

    def made() -> asyncio.Protocol:
        counts[("accepted",)] += 1
        return Holder(open_now)

    acceptor = listeners.Acceptor(loop, sock, made, counts, open_count=lambda: open_now[0], label="policy")
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    acceptor.start()
    await stop.wait()
    acceptor.close()
    return counts


def _sockets(mode: str, port: int, workers: int) -> list[socket.socket]:
    if mode == "gate":
        return listeners.bind(ListenConfig(protocol="policy", address=f"127.0.0.1:{port}"), workers).sockets
    socks = []
    for _ in range(1 if mode == "shared" else workers):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mode == "reuseport":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(listeners.BACKLOG)
        sock.setblocking(False)
        socks.append(sock)
    return socks * workers if mode == "shared" else socks


def herd(mode: str, workers: int, persistent: int, short: int) -> list[dict[str, int]]:
    """Each worker's accepts, empty wake-ups and deferrals: ``persistent`` connections held
    open, then ``short`` ones one after another."""
    import uvloop

    port = free_port()
    socks = _sockets(mode, port, workers)
    children = []
    for slot in range(workers):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            counts = uvloop.run(_acceptor(socks[slot]))
            os.write(w, json.dumps({"accepted": counts[("accepted",)],
                                    "empty": counts[("accept_wakeups", "policy", "empty")],
                                    "deferred": counts[("accept_wakeups", "policy", "deferred")]}).encode())
            os._exit(0)
        os.close(w)
        children.append((pid, r))
    time.sleep(0.5)  # the workers start polling (a benchmark, not a test)
    held = []
    for _ in range(persistent):
        held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert held[-1].recv(2) == b"hi"
    time.sleep(0.2)
    for _ in range(short):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            assert c.recv(2) == b"hi"
    out = []
    for pid, r in children:
        os.kill(pid, signal.SIGTERM)
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
        os.waitpid(pid, 0)
        out.append(json.loads(data))
    for c in held:
        c.close()
    for sock in set(socks):
        sock.close()
    return out


def herd_table(workers: int, persistent: int, short: int) -> str:
    lines = [f"| listening ({workers} workers) | accepts per worker ({persistent} persistent + {short} short) | "
             "empty wake-ups per accept | deferrals per accept |", "|---|---|---:|---:|"]
    for mode in ("reuseport", "shared", "gate"):
        got = herd(mode, workers, persistent, short)
        total = sum(g["accepted"] for g in got) or 1
        lines.append(f"| {mode} | {' / '.join(str(g['accepted']) for g in got)} | "
                     f"{sum(g['empty'] for g in got) / total:.2f} | {sum(g['deferred'] for g in got) / total:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="4,16,64")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--herd", action="store_true")
    parser.add_argument("--short", type=int, default=500)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.herd:
        for n in counts:
            print(herd_table(args.workers, n, 0))
            print(herd_table(args.workers, 0, args.short))
        return
    print(table(measure(counts, args.trials, args.workers), args.workers))


if __name__ == "__main__":
    main()
