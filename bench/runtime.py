"""The pre-fork runtime under load, in one run (issue 4):

1. warm-cache decisions/s through the policy protocol with 1 and with 2 workers;
2. upstream DNS queries per decision with 2 workers, shared cache layer on and off, on the
   same cold workload (every identity asked from every connection, so both workers see it).

    .venv/bin/python -m bench.runtime [--seconds 10] [--connections 16] [--ids 1000]

Prints the markdown table for bench/RESULTS.md. Everything runs on loopback: the project's
test DNS server (in this process) and ``checkid serve`` (a subprocess) on free ports.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dns.zone

from bench import load
from bench.workload import Request
from testsupport.dnsserver import TestDnsServer, Zones
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

ZONES = Path(__file__).resolve().parent.parent / "testsupport" / "zones"


def bench_zones(ids: int) -> Zones:
    """testsupport/zones plus a registry (benchreg.test) and SPF data (bench.test) for ``ids`` IDs."""
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


def trace(ids: int, path: Path) -> Path:
    """One request per ID, in order, each its own message (a policy request of the same
    message is answered from that message's decision); the client's connections each start
    at a different ID."""
    return load.write_trace("policy", (Request("pass", "192.0.2.1", f"id{i}.bench.test", f"bounce-{i}@id{i}.bench.test",
                                               "user@example.org", message=i) for i in range(ids)), path)


def measure(seconds: float, connections: int, ids: int, max_requests: int = 0) -> dict[str, Any]:
    """Warm decisions/s with 1 and 2 workers; upstream queries per decision, shared layer off/on.
    ``max_requests`` ends each warm run early (0: it runs ``seconds``)."""
    out: dict[str, Any] = {"warm": {}, "queries_per_decision": {}, "decisions": {}}
    tmp = world_readable_tmpdir("checkid-bench-trace-")
    with TestDnsServer(bench_zones(ids)) as server:
        warm_set = trace(200, tmp / "warm.bin")
        for workers in (1, 2):
            with daemon(server, workers, shared=True) as checkid:
                load.run("policy", checkid.port, warm_set, connections, 60, max_requests=200)  # warm up
                out["warm"][workers] = asdict(load.run("policy", checkid.port, warm_set, connections, seconds,
                                                       max_requests=max_requests))
                shutil.rmtree(checkid.workdir, ignore_errors=True)
        cold = trace(ids, tmp / "cold.bin")
        for shared in (False, True):
            with daemon(server, 2, shared=shared) as checkid:
                result = load.run("policy", checkid.port, cold, connections, 120, max_requests=ids * connections,
                                  dns=server.address)
                out["queries_per_decision"][shared] = result.queries_per_decision or 0.0
                out["decisions"][shared] = result.requests
                shutil.rmtree(checkid.workdir, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def table(results: dict[str, Any], connections: int, ids: int) -> str:
    lines = ["| measurement | value | ratio |", "|---|---:|---:|"]
    warm = {w: load.Result(**r) for w, r in results["warm"].items()}
    for workers, r in warm.items():
        lines.append(f"| warm decisions/s, policy protocol, {workers} worker{'s' if workers > 1 else ''}, "
                     f"{connections} connections | {r.rate:,.0f}/s (p50 {r.p50 * 1e3:.2f} ms, p99 {r.p99 * 1e3:.2f} "
                     f"ms, {r.errors} errors) | {r.rate / warm[1].rate:.2f}× |")
    per = results["queries_per_decision"]
    for shared in (False, True):
        lines.append(f"| upstream DNS queries per decision, 2 workers, shared layer {'on' if shared else 'off'} "
                     f"({results['decisions'][shared]} decisions, {ids} IDs) | {per[shared]:.3f} | "
                     f"{per[shared] / per[False]:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="pre-fork runtime benchmark")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--ids", type=int, default=1000)
    args = parser.parse_args()
    results = measure(args.seconds, args.connections, args.ids)
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores (load client and server share them)")
    print()
    print(table(results, args.connections, args.ids))


if __name__ == "__main__":
    main()
