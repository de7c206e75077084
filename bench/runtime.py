"""The pre-fork runtime under load, in one run (issue 4):

1. warm-cache decisions/s through the policy protocol with 1 and with 2 workers;
2. upstream DNS queries per decision with 2 workers, shared cache layer on and off, on the
   same cold workload (every identity asked from every connection, so both workers see it).

    .venv/bin/python -m bench.runtime [--seconds 10] [--connections 4] [--ids 1000]

Prints the markdown table for bench/RESULTS.md. Everything runs on loopback: the project's
test DNS server (in this process) and ``checkid serve`` (a subprocess) on free ports.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
from pathlib import Path

import dns.zone

from bench import load
from tests.dnsserver import TestDnsServer, Zones
from tests.processes import Checkid, free_port, world_readable_tmpdir

ZONES = Path(__file__).resolve().parent.parent / "tests" / "zones"


def bench_zones(ids: int) -> Zones:
    """tests/zones plus a registry (benchreg.test) and SPF data (bench.test) for ``ids`` IDs."""
    zones = Zones(ZONES)
    soa = "@ 3600 SOA ns hostmaster 1 3600 600 86400 300\n@ 3600 NS ns\n"
    reg = soa + "".join(f'id{i}.bench.test 3600 TXT "mth=SPF1+5 svc=S1:A,M2:A,H1:B"\n' for i in range(ids))
    spf = soa + "".join(f'id{i} 3600 TXT "v=spf1 ip4:192.0.2.0/24 -all"\n' for i in range(ids))
    zones.add_zone(dns.zone.from_text(reg, origin="benchreg.test", relativize=False))
    zones.add_zone(dns.zone.from_text(spf, origin="bench.test", relativize=False))
    return zones


def daemon(server: TestDnsServer, workers: int, shared: bool) -> Checkid:
    port = free_port()
    workdir = world_readable_tmpdir("checkid-bench-")
    toml = f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{port}"
[server]
workers = {workers}
state_dir = "{workdir / 'state'}"
log_level = "warning"
[cache]
shared = {str(shared).lower()}
[dns]
nameservers = ["{server.address}"]
[registry]
zone = "benchreg.test"
"""
    checkid = Checkid(toml, workdir, [port])
    checkid.port = port  # type: ignore[attr-defined]
    checkid.workdir = workdir  # type: ignore[attr-defined]
    return checkid


def workload(ids: int, connections: int) -> list[list[bytes]]:
    """Every ID from every connection, each connection starting at a different ID."""
    per = []
    for c in range(connections):
        order = [(i + c * ids // connections) % ids for i in range(ids)]
        per.append([load.request(f"192.0.2.{1 + c}", f"id{i}.bench.test", i * connections + c) for i in order])
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description="pre-fork runtime benchmark")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--ids", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    with TestDnsServer(bench_zones(args.ids)) as server:
        warm_set = workload(200, args.connections)
        rates = {}
        for workers in (1, 2):
            with daemon(server, workers, shared=True) as checkid:
                load.run(checkid.port, warm_set, seconds=60, max_requests=len(warm_set[0]))  # warm up
                result = load.run(checkid.port, warm_set, seconds=args.seconds)
                rates[workers] = result
                shutil.rmtree(checkid.workdir, ignore_errors=True)
            rows.append(f"| warm decisions/s, policy protocol, {workers} worker{'s' if workers > 1 else ''}, "
                        f"{args.connections} connections | {result.rate:,.0f}/s (p50 {result.percentile(50)*1e3:.2f} ms, "
                        f"p99 {result.percentile(99)*1e3:.2f} ms, {result.errors} errors) | "
                        f"{result.rate / rates[1].rate:.2f}× |")
        cold = workload(args.ids, args.connections)
        per_decision = {}
        for shared in (False, True):
            with daemon(server, 2, shared=shared) as checkid:
                server.reset_counts()
                result = load.run(checkid.port, cold, seconds=120, max_requests=len(cold[0]))
                per_decision[shared] = server.total / result.requests
                shutil.rmtree(checkid.workdir, ignore_errors=True)
            rows.append(f"| upstream DNS queries per decision, 2 workers, shared layer {'on' if shared else 'off'} "
                        f"({result.requests} decisions, {args.ids} IDs) | {per_decision[shared]:.3f} | "
                        f"{per_decision[shared] / per_decision[False]:.2f}× |")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores (load client and server share them)")
    print()
    print("| measurement | value | ratio |")
    print("|---|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
