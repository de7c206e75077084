"""How SO_REUSEPORT spreads a few long-lived connections over the workers (issue 15).

``checkid serve`` with 2 workers (one SO_REUSEPORT socket each) on the policy listener; for
each connection count, ``--trials`` times: open that many persistent connections (as
Postfix's smtpd processes hold them), ask one request on each, then read how many each
worker has open from its own ``checkid_open_connections`` gauge file (the metrics directory
holds one per worker process; /metrics shows only their sum), then close them all. The
kernel hashes each connection's 4-tuple to a socket, so the split is a coin toss per
connection: beside the measured spread this prints the binomial one.

    .venv/bin/python -m bench.split [--counts 4,16,64] [--trials 20] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import socket
import statistics
import time
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

from bench.runtime import ZONES
from checkid.protocols.postfix_policy import codec as pol
from testsupport.dnsserver import TestDnsServer, Zones
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

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
log_level = "warning"
[dns]
nameservers = ["{server.address}"]
"""
        with Checkid(toml, workdir, [port]):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="4,16,64")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    print(table(measure(counts, args.trials, args.workers), args.workers))


if __name__ == "__main__":
    main()
