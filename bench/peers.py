"""checkid beside the tools operators run today, on the same trace and DNS data, in one run.

Everything runs inside a private network and mount namespace (``unshare -mn``, entered by
this script itself): only its own loopback exists there, and /etc/resolv.conf is bind-mounted
to point at a local Unbound whose stub zone is the project's test DNS server serving the
generated workload (bench/workload.py). Through the policy protocol, with the compiled load
client (bench/c/loadclient.c; one request in flight per connection, as Postfix does):

- policyd-spf (Debian postfix-policyd-spf-python), one process per connection as Postfix
  spawns it (socat ... EXEC:), behind the warm Unbound its documentation recommends;
- checkid (``checkid serve``, 2 workers) asking the same Unbound;
- the null policy server (bench/nullserver.py): checkid's protocol code, no decision.

Through MessagePack-RPC (same client, msgpack framing): checkid and the null server (no
peer speaks it). As milters, whole sessions with the compiled session client
(bench/c/miltersessions.c, a new connection per session, as an MTA plays them): pyspf-milter
(Debian, libmilter via pymilter, SPF at MAIL FROM), checkid's milter listener, and the null
milter. Then an offered-load sweep of checkid's policy listener (10–90 % of the maximum just
measured; latency p50…p99.9 per step) and the workers' resident memory.

policyd-spf only checks SPF (HELO and MAIL FROM); checkid runs its whole pipeline (DNSBL,
registry, SPF, reputation). The trace leaves out the DNS-timeout senders, which would only
measure policyd-spf's 20 s lookup limit.

    .venv/bin/python -m bench.peers [--seconds 8] [--connections 16] [--sessions 4] (bench/run_all runs it)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dns.zone

from bench import load
from bench.workload import DNSBL, REGISTRY, Workload
from testsupport.dnsserver import TestDnsServer, Zones
from testsupport.processes import Checkid, free_port, wait_for_port, world_readable_tmpdir

ROOT = Path(__file__).resolve().parent.parent
#: (protocol, server) in the order they run; the first of each protocol is its null server.
#: policyd-spf also runs with 4 connections (4 processes), its better figure on 2 cores: the
#: ratio is taken to the peer's best row.
RUNS = (("policy", "null"), ("policy", "checkid"), ("policy", "policyd-spf"), ("policy", "policyd-spf, 4 connections"),
        ("msgpack-rpc", "null"), ("msgpack-rpc", "checkid"),
        ("milter", "null"), ("milter", "checkid"), ("milter", "pyspf-milter"))
PEER = {"policy": "policyd-spf", "milter": "pyspf-milter"}


def rss_kib(parent: int, prefix: str = "") -> list[int]:
    """Resident set sizes (KiB) of ``parent``'s children whose process name starts with
    ``prefix``."""
    out = []
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in children:
        try:
            if not Path(f"/proc/{pid}/comm").read_text().startswith(prefix):
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        out.extend(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return out


def unbound(workdir: Path, dns_port: int) -> subprocess.Popen[bytes]:
    conf = workdir / "unbound.conf"
    conf.write_text(f"""server:
  interface: 127.0.0.1
  port: 53
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{workdir}"
  pidfile: "{workdir}/unbound.pid"
  use-syslog: no
  verbosity: 0
  num-threads: 1
  module-config: "iterator"
  do-not-query-localhost: no
  local-zone: "test." nodefault
  msg-cache-size: 64m
  rrset-cache-size: 128m
stub-zone:
  name: "bench.test"
  stub-addr: 127.0.0.1@{dns_port}
  stub-prime: no
""")
    proc = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import dns.resolver
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    deadline = time.monotonic() + 30
    while True:
        try:
            resolver.resolve(REGISTRY, "SOA", lifetime=1)
            return proc
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("unbound did not start") from None
            time.sleep(0.1)


def inside(args: argparse.Namespace) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    workdir = world_readable_tmpdir("checkid-peers-")
    resolv = workdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
    workload = Workload(args.senders, args.requests, args.seed)
    zones = Zones()
    for origin, text in workload.zones().items():
        zones.add_zone(dns.zone.from_text(text, origin=origin, relativize=False))
    requests = [r for r in workload.requests if r.cls != "timeout"]
    traces = {protocol: load.write_trace(protocol, requests, workdir / f"{protocol}.bin")
              for protocol in ("policy", "msgpack-rpc", "milter")}
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[tuple[str, str], int] = {}
    results: dict[str, object] = {}
    with TestDnsServer(zones, rtt=args.rtt) as server:
        try:
            procs.append(unbound(workdir, server.port))
            nulls = {}
            for protocol in ("policy", "msgpack-rpc", "milter"):
                ports[(protocol, "null")] = free_port()
                nulls[protocol] = subprocess.Popen(
                    [sys.executable, "-m", "bench.nullserver", "--protocol", protocol, "--port",
                     str(ports[(protocol, "null")]), "--workers", str(args.workers)], cwd=ROOT)
                procs.append(nulls[protocol])
            ports[("policy", "policyd-spf")] = free_port()
            procs.append(subprocess.Popen(["socat", f"TCP-LISTEN:{ports[('policy', 'policyd-spf')]},bind=127.0.0.1,"
                                           "reuseaddr,fork", "EXEC:/usr/bin/policyd-spf"], stderr=subprocess.DEVNULL))
            ports[("milter", "pyspf-milter")] = free_port()
            (workdir / "pyspf-milter.conf").write_text(
                f"debugLevel = 0\nTestOnly = 1\nHELO_reject = Fail\nMail_From_reject = Fail\n"
                f"Socket = inet:{ports[('milter', 'pyspf-milter')]}@127.0.0.1\nPidFile = {workdir}/pyspf-milter.pid\n"
                f"UserID = pyspf-milter\nInternalHosts = 127.0.0.1\n")
            procs.append(subprocess.Popen(["pyspf-milter", str(workdir / "pyspf-milter.conf")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            listen = ""
            for protocol in ("policy", "msgpack-rpc", "milter"):
                ports[(protocol, "checkid")] = free_port()
                listen += f'[[listen]]\nprotocol = "{protocol}"\naddress = "127.0.0.1:{ports[(protocol, "checkid")]}"\n'
            toml = f"""{listen}
[server]
workers = {args.workers}
log_level = "warning"
state_dir = "{workdir / 'state'}"
[dns]
nameservers = ["127.0.0.1"]
[registry]
zone = "{REGISTRY}"
[prescreen]
dnsbl = [{{ zone = "{DNSBL}" }}]
"""
            for key, port in ports.items():
                if key[1] != "checkid":
                    wait_for_port(port)
            checkid_ports = [port for (_, name), port in ports.items() if name == "checkid"]
            with Checkid(toml, workdir, checkid_ports) as checkid:
                assert checkid.proc is not None
                runs: dict[str, dict[str, dict[str, float]]] = {}
                for protocol, name in RUNS:
                    trace = traces[protocol]
                    conns = args.sessions if protocol == "milter" else 4 if name.endswith("4 connections") \
                        else args.connections
                    port = ports[(protocol, name.split(",")[0])]
                    load.run(protocol, port, trace, conns, args.warm, max_requests=args.max_requests)  # warms
                    result = load.run(protocol, port, trace, conns, args.seconds, max_requests=args.max_requests)
                    runs.setdefault(protocol, {})[name] = {**asdict(result), "rate": result.rate}
                results["runs"] = runs
                top = runs["policy"]["checkid"]["rate"]
                sweep = []
                for share in args.loads:
                    result = load.run("policy", ports[("policy", "checkid")], traces["policy"], args.connections,
                                      args.sweep_seconds, rate=share * top, max_requests=args.max_requests)
                    sweep.append({"share": share, "offered": share * top, **asdict(result), "rate": result.rate})
                results["sweep"] = sweep
                results["rss"] = {"checkid": rss_kib(checkid.proc.pid, "checkid-w"),
                                  "null": rss_kib(nulls["policy"].pid)}
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            shutil.rmtree(workdir, ignore_errors=True)
    results["versions"] = versions()
    print(json.dumps(results))


def versions() -> dict[str, str]:
    """The peers' Debian package versions."""
    out = {}
    for package in ("postfix-policyd-spf-python", "pyspf-milter", "unbound"):
        q = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
        out[package] = q.stdout.strip() or "?"
    return out


def main() -> None:
    args = parse_args()
    results = measure(args)
    print(report(results, args))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="checkid vs policyd-spf, pyspf-milter and the null servers")
    parser.add_argument("--seconds", type=float, default=8.0, help="each measured run")
    parser.add_argument("--warm", type=float, default=3.0, help="each warm-up run before it")
    # 16: persistent connections are spread over the workers' SO_REUSEPORT slots by a hash of
    # their ports; with 4, one worker often gets 3 or all of them and the run measures the luck
    parser.add_argument("--connections", type=int, default=16, help="policy and msgpack-rpc connections")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent milter sessions")
    parser.add_argument("--workers", type=int, default=2, help="checkid's and the null servers'")
    parser.add_argument("--senders", type=int, default=500)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rtt", type=float, default=0.0)
    parser.add_argument("--loads", type=lambda t: [float(x) for x in t.split(",")],
                        default=[0.1, 0.3, 0.5, 0.7, 0.9], help="offered load sweep, shares of the maximum")
    parser.add_argument("--sweep-seconds", type=float, default=4.0)
    parser.add_argument("--max-requests", type=int, default=0,
                        help="end each run after this many requests (0: after its seconds only)")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run everything inside a fresh network and mount namespace; return the results."""
    if os.environ.get("CHECKID_BENCH_NS") == "1":
        raise RuntimeError("already inside the benchmark namespace")
    env = {**os.environ, "CHECKID_BENCH_NS": "1"}
    argv = [f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()]
    budget = (args.seconds + args.warm) * len(RUNS) + args.sweep_seconds * len(args.loads) + 600
    out = subprocess.run(["unshare", "-mn", sys.executable, "-m", "bench.peers", *argv], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=budget)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-4000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    runs = results["runs"]
    v = results["versions"]
    out = [f"Trace: {args.requests} requests from {args.senders} senders (seed {args.seed}), DNS-timeout senders left "
           f"out; policy and msgpack-rpc: {args.connections} connections, one request in flight each (enough for the "
           f"kernel's SO_REUSEPORT hash to spread them over the workers); milter: {args.sessions} concurrent sessions, "
           f"a new connection each; checkid and the null servers with "
           f"{args.workers} workers; {args.warm:g} s warm-up then {args.seconds:g} s measured per row. Peers: "
           f"postfix-policyd-spf-python {v['postfix-policyd-spf-python']}, pyspf-milter {v['pyspf-milter']}, "
           f"Unbound {v['unbound']}.", ""]
    units = {"policy": "decisions/s", "msgpack-rpc": "decisions/s", "milter": "sessions/s"}
    for protocol, rows in runs.items():
        peer = PEER.get(protocol)
        best = max((r["rate"] for name, r in rows.items() if peer and name.startswith(peer)), default=0.0)
        head = f"| {protocol} server | {units[protocol]} | p50 | p90 | p99 | p99.9 | errors | vs null server |"
        sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
        if peer:
            head += f" vs {peer} (best row) |"
            sep += "---:|"
        out += [head, sep]
        for name, r in rows.items():
            line = (f"| {name} | {r['rate']:,.0f} | {ms(r['p50'])} | {ms(r['p90'])} | {ms(r['p99'])} | {ms(r['p999'])} "
                    f"| {r['errors']} | {r['rate'] / rows['null']['rate']:.2f}× |")
            if peer:
                line += f" {r['rate'] / best:.2f}× |"
            out.append(line)
        out.append("")
    out += ["Offered load sweep, checkid through the policy protocol (latency from each request's scheduled "
            "send time):", "",
            "| offered load | offered/s | achieved/s | p50 | p90 | p99 | p99.9 | errors |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["sweep"]:
        out.append(f"| {r['share'] * 100:.0f} % | {r['offered']:,.0f} | {r['rate']:,.0f} | {ms(r['p50'])} | "
                   f"{ms(r['p90'])} | {ms(r['p99'])} | {ms(r['p999'])} | {r['errors']} |")
    rss = results["rss"]
    out += ["", f"Worker RSS after the run: checkid {', '.join(f'{k / 1024:.1f} MiB' for k in rss['checkid'])}; "
            f"null server worker {', '.join(f'{k / 1024:.1f} MiB' for k in rss['null'])} (Python, uvloop and the "
            "protocol code, no engine)."]
    return "\n".join(out)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


if __name__ == "__main__":
    if os.environ.get("CHECKID_BENCH_NS") == "1":
        inside(parse_args())
    else:
        main()
