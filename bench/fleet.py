"""The cost of the fleet's shared pieces (issue 16, docs/fleet.md): the HAProxy hop and a hit
in the shared Unbound's cache.

    .venv/bin/python -m bench.fleet [--seconds 10] [--connections 8] [--rounds 3]
        [--queries 2000] [--smoke] [--json]

- *HAProxy hop*: one ``checkid serve`` (``--workers``, warm cache) on the test DNS server;
  a private HAProxy in front of it with deploy/haproxy.cfg's defaults (``mode tcp``,
  ``leastconn``, health checks on ``/healthz``). The compiled policy client (bench/load.py)
  sends closed-loop decisions over ``--connections`` connections, direct and through HAProxy,
  alternating ``--rounds`` times in the same run; decisions/s and p50/p99 of each, and the
  ratios through/direct.
- *Unbound hit*: a private Unbound on deploy/unbound.conf (its caches warm) forwarding to the
  test DNS server; the round trip of ``--queries`` queries for a name in Unbound's cache,
  against the same queries asked of the test DNS server directly (what a host resolving alone
  pays for a name its own cache lacks is the upstream's round trip: milliseconds over a real
  network; the test server's is on loopback, in Python).

Everything on loopback. Wall-clock figures: on a busy machine they are noise; ratios between
rows of one run are what to read.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query

from bench import load
from bench.workload import Request
from testsupport.dnsserver import TestDnsServer
from testsupport.mta import HAProxy, terminate
from testsupport.policy import ask
from testsupport.processes import Checkid, free_port, get_healthz, wait_until, world_readable_tmpdir

ROOT = Path(__file__).resolve().parent.parent
ZONES = ROOT / "testsupport" / "zones"
#: the name the Unbound rows ask: in the test zones, cached by Unbound after the first query
NAME = "example.com.registry.test"


def daemon(server: TestDnsServer, workdir: Path, workers: int) -> Checkid:
    port = free_port()
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
[registry]
zone = "registry.test"
"""
    checkid = Checkid(toml, workdir, [port])
    checkid.port = port  # type: ignore[attr-defined]
    return checkid


def haproxy_config(backend_port: int, metrics_port: int, front_port: int) -> str:
    """deploy/haproxy.cfg's ``defaults`` (the production timeouts, checks and balancing) with one
    policy frontend and one server."""
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    defaults = text.split("\ndefaults\n", 1)[1].split("\n# --", 1)[0]
    defaults = "\n".join(line for line in defaults.splitlines() if line.split()[:1] != ["log"])
    defaults = defaults.replace("port 10039", f"port {metrics_port}")
    return f"""defaults
{defaults}

frontend checkid_policy
    bind 127.0.0.1:{front_port}
    default_backend checkid_policy

backend checkid_policy
    option httpchk GET /healthz
    http-check expect status 200
    server host1 127.0.0.1:{backend_port}
"""


def _answers(port: int) -> bool:
    try:
        return ask(port).startswith("PREPEND")
    except OSError:
        return False


def hop(server: TestDnsServer, workdir: Path, seconds: float, connections: int, rounds: int, workers: int,
        max_requests: int) -> dict[str, Any]:
    """Decisions direct and through HAProxy, alternating: {"direct": [Result], "haproxy": [Result]}."""
    out: dict[str, Any] = {"direct": [], "haproxy": []}
    with daemon(server, workdir, workers) as checkid:
        port: int = checkid.port  # type: ignore[attr-defined]
        assert ask(port).startswith("PREPEND")  # warm
        # /healthz says "workers gone" until the master has seen its workers serving: a first
        # check then would take the host out of HAProxy's pool for `rise` checks
        wait_until(lambda: get_healthz(checkid.metrics_port)[0] == 200, "/healthz answering 200", 30.0)
        front = free_port()
        with HAProxy(haproxy_config(port, checkid.metrics_port, front), [front]):
            wait_until(lambda: _answers(front), "a decision through HAProxy", 30.0)
            # each request its own message: the same message's requests share one decision
            trace = load.write_trace("policy", [Request("pass", "192.0.2.1", "example.com", "a@example.com",
                                                        "u@example.org", message=i) for i in range(50)],
                                     workdir / "trace.bin")
            load.run("policy", front, trace, connections, 1.0, 0.0, max_requests)  # settle both paths
            for _ in range(rounds):
                out["direct"].append(load.run("policy", port, trace, connections, seconds, 0.0, max_requests))
                out["haproxy"].append(load.run("policy", front, trace, connections, seconds, 0.0, max_requests))
    return out


def unbound_conf(workdir: Path, port: int, upstream: TestDnsServer) -> str:
    """deploy/unbound.conf on loopback, no DNSSEC (the test zones are unsigned), forwarding to
    the test DNS server."""
    dropped = {"interface", "port", "access-control", "num-threads", "msg-cache-slabs", "rrset-cache-slabs",
               "infra-cache-slabs", "key-cache-slabs", "module-config", "trust-anchor-file", "use-syslog",
               "forward-addr", "msg-cache-size", "rrset-cache-size"}
    text = "\n".join(line for line in (ROOT / "deploy" / "unbound.conf").read_text().splitlines()
                     if line.split(":", 1)[0].strip() not in dropped)
    text = text.replace("server:\n", f"""server:
    interface: 127.0.0.1
    port: {port}
    access-control: 127.0.0.0/8 allow
    num-threads: 1
    msg-cache-size: 16m
    rrset-cache-size: 32m
    module-config: "iterator"
    use-syslog: no
    logfile: ""
    username: ""
    chroot: ""
    directory: "{workdir}"
    pidfile: "{workdir}/unbound.pid"
    do-not-query-localhost: no
    local-zone: "test." nodefault
""", 1)
    return text.replace('    name: "."\n', f'    name: "."\n    forward-addr: {upstream.host}@{upstream.port}\n', 1)


def rtts(port: int, queries: int) -> list[float]:
    """Seconds per query for ``NAME`` TXT at 127.0.0.1:``port``, one after another."""
    query = dns.message.make_query(NAME, "TXT")
    out = []
    for _ in range(queries):
        start = time.perf_counter()
        reply = dns.query.udp(query, "127.0.0.1", 5.0, port)
        out.append(time.perf_counter() - start)
        assert reply.answer, f"no answer for {NAME}"
    return out


def unbound_hit(server: TestDnsServer, workdir: Path, queries: int) -> dict[str, Any]:
    """Round trips of a warm Unbound hit and of the test DNS server, and the upstream queries
    Unbound made during its rows (0: every one was a hit)."""
    port = free_port()
    conf = workdir / "unbound.conf"
    conf.write_text(unbound_conf(workdir, port, server))
    proc = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:  # started, and NAME in its cache
            try:
                rtts(port, 1)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("unbound did not start") from None
                time.sleep(0.1)
        before = server.total
        unbound = rtts(port, queries)
        upstream = server.total - before
        direct = rtts(server.port, queries)
    finally:
        terminate(proc)
    return {"unbound": unbound, "direct": direct, "upstream_queries": upstream}


def measure(seconds: float = 10.0, connections: int = 8, rounds: int = 3, queries: int = 2000, workers: int = 1,
            max_requests: int = 0) -> dict[str, Any]:
    """Both measurements, for bench/run_all.py; ``max_requests`` (0: none) bounds each load run."""
    workdir = world_readable_tmpdir("checkid-bench-fleet-")
    try:
        with TestDnsServer(ZONES) as server:
            result = hop(server, workdir, seconds, connections, rounds, workers, max_requests)
            result["dns"] = unbound_hit(server, workdir, queries)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def summary(r: dict[str, Any]) -> dict[str, float]:
    """Medians over the rounds, and the ratios through HAProxy / direct."""
    out: dict[str, float] = {}
    for path in ("direct", "haproxy"):
        out[f"{path}_rate"] = statistics.median(x.rate for x in r[path])
        out[f"{path}_p50"] = statistics.median(x.p50 for x in r[path])
        out[f"{path}_p99"] = statistics.median(x.p99 for x in r[path])
        out[f"{path}_errors"] = sum(x.errors for x in r[path])
    out["rate_ratio"] = out["haproxy_rate"] / out["direct_rate"] if out["direct_rate"] else float("nan")
    out["p50_ratio"] = out["haproxy_p50"] / out["direct_p50"] if out["direct_p50"] else float("nan")
    out["p99_ratio"] = out["haproxy_p99"] / out["direct_p99"] if out["direct_p99"] else float("nan")
    d = r["dns"]
    out["unbound_hit_p50"] = statistics.median(d["unbound"])
    out["direct_dns_p50"] = statistics.median(d["direct"])
    out["unbound_upstream_queries"] = d["upstream_queries"]
    return out


def table(r: dict[str, Any]) -> str:
    """The markdown rows for bench/RESULTS.md."""
    s = summary(r)
    return "\n".join([
        "| path | decisions/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|",
        f"| direct | {s['direct_rate']:,.0f} | {s['direct_p50'] * 1e3:.3f} | {s['direct_p99'] * 1e3:.3f} | "
        f"{s['direct_errors']:.0f} |",
        f"| through HAProxy | {s['haproxy_rate']:,.0f} | {s['haproxy_p50'] * 1e3:.3f} | "
        f"{s['haproxy_p99'] * 1e3:.3f} | {s['haproxy_errors']:.0f} |",
        f"| ratio through/direct | {s['rate_ratio']:.2f} | {s['p50_ratio']:.2f} | {s['p99_ratio']:.2f} | |",
        "",
        "| DNS query | p50 µs | upstream queries |", "|---|---|---|",
        f"| warm Unbound hit | {s['unbound_hit_p50'] * 1e6:.0f} | {s['unbound_upstream_queries']:.0f} |",
        f"| the test DNS server directly (Python, loopback) | {s['direct_dns_p50'] * 1e6:.0f} | - |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per load run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="direct/HAProxy alternations")
    parser.add_argument("--queries", type=int, default=2000, help="DNS queries per row")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves it runs, figures meaningless")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.connections = 2
        r = measure(2.0, args.connections, 1, 20, 1, max_requests=200)
    else:
        r = measure(args.seconds, args.connections, args.rounds, args.queries, args.workers)
    if args.json:
        print(json.dumps(summary(r)))
        return
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; closed loop over "
          f"{args.connections} connections; wall clock: noise on a busy machine\n")
    print(table(r))


if __name__ == "__main__":
    main()
