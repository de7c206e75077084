"""Decision latency while the metrics endpoint is scraped hard (issue 14: "1,000 concurrent
scrapes raise decision p99 from 0.27 to 3.1 ms").

    .venv/bin/python -m bench.scrapes [--seconds 10] [--rate 500] [--connections 8]
        [--scrapers 1000] [--max-scrapes 200000]

One ``checkid serve`` (a subprocess, one worker) on the project's test DNS server (in this
process), its cache warmed first. The compiled policy client (bench/load.py) sends decisions
at a steady ``--rate`` over ``--connections`` connections and reports p50/p99 from each
request's scheduled time; once alone, once while ``--scrapers`` asyncio clients (a process of
their own, so their CPU is not this process's GIL) each loop on ``GET /metrics``, every one
on a new connection, until ``--seconds`` pass or ``--max-scrapes`` answers came. Prints the
markdown table for bench/RESULTS.md. Everything on loopback.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from bench import load
from bench.workload import Request
from testsupport.dnsserver import TestDnsServer
from testsupport.policy import ask
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

ZONES = Path(__file__).resolve().parent.parent / "testsupport" / "zones"
#: the bound on one scrape's wait: far above a scrape's cost, so only a stuck endpoint hits it
SCRAPE_TIMEOUT = 10.0


def daemon(server: TestDnsServer, workdir: Path) -> Checkid:
    port = free_port()
    toml = f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{port}"
[server]
workers = 1
state_dir = "{workdir / 'state'}"
log_level = "warning"
[dns]
nameservers = ["{server.address}"]
[registry]
zone = "registry.test"
"""
    checkid = Checkid(toml, workdir, [port])
    checkid.port = port  # type: ignore[attr-defined]
    return checkid


async def _scrape_loop(port: int, deadline: float, budget: list[int], counts: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline and budget[0] > 0:
        budget[0] -= 1
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), SCRAPE_TIMEOUT)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), SCRAPE_TIMEOUT)
            writer.close()
            counts["ok" if answer.startswith(b"HTTP/1.1 200") else "closed"] += 1
        except (OSError, asyncio.TimeoutError):
            counts["error"] += 1
            await asyncio.sleep(0.01)  # a refused connect must not spin


def scrapers(port: int, clients: int, seconds: float, max_scrapes: int, out: Any) -> None:
    """``clients`` concurrent scrape loops for ``seconds`` or ``max_scrapes`` answers in all."""
    async def main() -> dict[str, int]:
        counts = {"ok": 0, "closed": 0, "error": 0}
        deadline = asyncio.get_running_loop().time() + seconds
        budget = [max_scrapes]
        await asyncio.gather(*(_scrape_loop(port, deadline, budget, counts) for _ in range(clients)))
        return counts
    out.send(asyncio.run(main()))


def measure(seconds: float, rate: float, connections: int, clients: int, max_scrapes: int) -> dict[str, Any]:
    workdir = world_readable_tmpdir("checkid-bench-scrapes-")
    result: dict[str, Any] = {}
    try:
        with TestDnsServer(ZONES) as server, daemon(server, workdir) as checkid:
            assert ask(checkid.port).startswith("PREPEND")  # warm
            # each request its own message: the same message's requests share one decision
            trace = load.write_trace("policy", [Request("pass", "192.0.2.1", "example.com", "a@example.com",
                                                        "u@example.org", message=i) for i in range(50)],
                                     workdir / "trace.bin")
            max_requests = int(rate * seconds) + 1
            load.run("policy", checkid.port, trace, connections, 2.0, rate, int(rate * 2))  # settle
            result["alone"] = load.run("policy", checkid.port, trace, connections, seconds, rate, max_requests)
            receive, send = multiprocessing.Pipe(duplex=False)
            proc = multiprocessing.Process(target=scrapers, args=(checkid.metrics_port, clients, seconds + 2.0,
                                                                    max_scrapes, send))
            proc.start()
            time.sleep(1.0)  # the scrapers connect before the measured second (a pacing gap, not a wait)
            result["scraped"] = load.run("policy", checkid.port, trace, connections, seconds, rate, max_requests)
            proc.join(seconds + 30.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            result["scrapes"] = receive.recv() if receive.poll(5) else {}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def table(label: str, r: dict[str, Any]) -> str:
    s = r["scrapes"]
    rows = [f"| {label}, no scrapes | {r['alone'].rate:,.0f} | {r['alone'].p50 * 1e3:.2f} | "
            f"{r['alone'].p99 * 1e3:.2f} | {r['alone'].errors} | - |",
            f"| {label}, scraped | {r['scraped'].rate:,.0f} | {r['scraped'].p50 * 1e3:.2f} | "
            f"{r['scraped'].p99 * 1e3:.2f} | {r['scraped'].errors} | "
            f"{s.get('ok', 0)} ok, {s.get('closed', 0)} closed, {s.get('error', 0)} errors |"]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0, help="decisions per second offered")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--scrapers", type=int, default=1000)
    parser.add_argument("--max-scrapes", type=int, default=200_000)
    parser.add_argument("--label", default="checkid")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = measure(args.seconds, args.rate, args.connections, args.scrapers, args.max_scrapes)
    if args.json:
        print(json.dumps({k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in r.items()}))
        return
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.rate:g} decisions/s over "
          f"{args.connections} connections, {args.seconds:g} s; {args.scrapers} concurrent scrape loops\n")
    print("| run | decisions/s | p50 ms | p99 ms | errors | scrapes |")
    print("|---|---|---|---|---|---|")
    print(table(args.label, r))


if __name__ == "__main__":
    main()
