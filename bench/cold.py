"""Cold decisions: every DNS answer a miss, each answer delayed by a round-trip time.

    .venv/bin/python -m bench.cold [--rtt 0.02] [--per-depth 20]

The test DNS server (its own process) serves the workload's zones (bench/workload.py) and waits ``--rtt``
before every answer, modelling the Internet behind a cache miss. The engine (in this
process, as a worker runs it) decides each sender once, one decision at a time, so every
lookup is a miss: the DNSBL, the registry, the SPF record and its include/redirect chain.
The table gives the median latency per SPF chain depth as a multiple of the RTT, beside the
bound the issue sets: depth + 1 (one RTT for the pre-screen, which must come first so that
listed spammers cost no registry query; then the registry and the SPF chain, with every
independent lookup in parallel). Beside it, the median CPU time this process spent per
decision (the DNS server's is its own process's): most of what a decision takes above the
bound, and a figure a busy machine disturbs less than the latency. ``bench/test_cold.py``
times that CPU alone (pytest-benchmark, the same decisions with instant DNS).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import uvloop

from bench.workload import DNSBL, REGISTRY, Sender, Workload
from checkid.config import Config, DnsConfig, DnsList, PrescreenConfig, RegistryConfig
from checkid.engine.decision import Envelope
from checkid.engine.engine import Engine
from testsupport.dnsserver import queries_asked
from testsupport.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


def measure(rtt: float, per_depth: int, seed: int = 1) -> dict[str, dict[str, float]]:
    """Median cold latency (in RTTs) and decisions per group: 'spammer' and 'depth N'."""
    workload = Workload(senders=max(200, per_depth * 12), requests=0, seed=seed)
    groups: dict[str, list[Sender]] = defaultdict(list)
    for s in workload.senders:
        key = "spammer" if s.cls == "spammer" else f"depth {s.spf_depth}" if s.cls == "pass" else None
        if key and len(groups[key]) < per_depth:
            groups[key].append(s)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="checkid-cold-") as tmp, dns_server(workload, Path(tmp), rtt) as address:
        config = Config(dns=DnsConfig(nameservers=(address,), timeout=max(1.0, 20 * rtt),
                                      decision_timeout=max(3.0, 40 * rtt)),
                        registry=RegistryConfig(zone=REGISTRY),
                        prescreen=PrescreenConfig(dnsbl=(DnsList(zone=DNSBL),)))
        engine = Engine(config)
        measured = round_trip(address)

        async def decide_all() -> None:
            for key in sorted(groups):
                times, cpu, queries = [], [], queries_asked(address)
                for s in groups[key]:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    await engine.decide(Envelope(s.ip, s.helo, sender=f"bench@{s.domain}", rcpts=("u@example.org",)))
                    times.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - cpu_start)
                depth = int(key.split()[1]) if key.startswith("depth") else 0
                out[key] = {"decisions": len(times), "median": statistics.median(times), "rtt": measured,
                            "median_rtts": statistics.median(times) / measured,
                            "bound_rtts": depth + 1, "queries": (queries_asked(address) - queries) / len(times),
                            "cpu": statistics.median(cpu)}
        uvloop.run(decide_all())
    return out


def round_trip(address: str, samples: int = 30) -> float:
    """The round trip one plain query sees (the injected RTT plus the server's own time): the
    unit the cold latencies are counted in."""
    host, _, port = address.rpartition(":")
    times = []
    for n in range(samples):
        query = dns.message.make_query(f"rtt{n}.{REGISTRY}.", "TXT")
        start = time.perf_counter()
        dns.query.udp(query, host, timeout=5, port=int(port))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def dns_server(workload: Workload, folder: Path, rtt: float) -> Iterator[str]:
    """The test DNS server in its own process (its CPU time is not the engine's), serving
    the workload's zones with ``rtt`` before every answer; yields its address."""
    for origin, text in workload.zones().items():
        (folder / f"{origin}.zone").write_text(text)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "testsupport.dnsserver", "--zones", str(folder), "--port", str(port),
                             "--rtt", str(rtt)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith("serving"):
            raise RuntimeError("the test DNS server did not start")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def table(results: dict[str, dict[str, float]], rtt: float) -> str:
    measured = next(iter(results.values()))["rtt"]
    lines = [f"Injected RTT {rtt * 1e3:.0f} ms; one plain query's round trip to the test server, measured in the "
             f"same run: {measured * 1e3:.2f} ms (the unit below).", "",
             "| senders | decisions | upstream queries each | median latency | in RTTs | goal (≤ RTTs) "
             "| engine CPU per decision |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, r in sorted(results.items(), key=lambda kv: (kv[0] != "spammer", kv[0])):
        name = "DNSBL-listed (rejected at the pre-screen)" if key == "spammer" else f"registered, SPF chain {key}"
        goal = f"{r['bound_rtts']:.0f}" if key != "spammer" else "(1)"
        lines.append(f"| {name} | {r['decisions']:.0f} | {r['queries']:.1f} | {r['median'] * 1e3:.1f} ms "
                     f"| {r['median_rtts']:.2f} | {goal} | {r['cpu'] * 1e3:.2f} ms |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", type=float, default=0.02)
    parser.add_argument("--per-depth", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = measure(args.rtt, args.per_depth)
    print(json.dumps(results) if args.json else table(results, args.rtt))


if __name__ == "__main__":
    main()
