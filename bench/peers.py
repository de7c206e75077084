"""checkid beside the limits of its stack and the tools operators run today, on the same traces
and DNS data, in one run.

Everything runs inside a private network and mount namespace (``unshare -mn``, entered by
this script itself): only its own loopback exists there, and /etc/resolv.conf is bind-mounted
to point at a local Unbound whose stub zone is the project's test DNS server serving both
traces' zones: the small one (bench/workload.py) and a border MTA's day (bench/border.py:
200,000+ client addresses, 20,000+ sender domains; its rows come after one full pass of it).
Each protocol's rows are divided by its ceiling, measured in the same run (bench/minimal.py):

- policy: a uvloop server that only finds the blank line and answers ``action=DUNNO``;
  checkid's null server (bench/nullserver.py: its own protocol code, a fixed decision);
  checkid (``checkid serve``, 2 workers, asking the same Unbound) on each trace; policyd-spf
  (Debian postfix-policyd-spf-python), one process per connection as Postfix spawns it
  (socat ... EXEC:). Compiled client (bench/c/loadclient.c), one request in flight per
  connection as Postfix does, at 4, 16, 64 and 256 connections;
- MessagePack-RPC: a server that only frames (msgpack.Unpacker) and answers a fixed result;
  the null server; checkid (no peer speaks it);
- milter, whole sessions (bench/c/miltersessions.c, a new connection per session, as an MTA
  plays them): the C null milter on libmilter (bench/c/nullmilter.c) over a unix socket (the
  ceiling) and over TCP (where libmilter's Nagle meets the MTA's delayed ACK at end of
  message: its real TCP figure); the null milter; checkid over TCP and over a unix socket;
  pyspf-milter (Debian, libmilter via pymilter, SPF at MAIL FROM).

Then an offered-load sweep of checkid's policy listener (10–90 % of the maximum just
measured; latency p50…p99.9 per step), p99 at 70 % of every checkid policy row's maximum, and
the workers' resident memory.

policyd-spf only checks SPF (HELO and MAIL FROM); checkid runs its whole pipeline (DNSBL,
registry, SPF, reputation). The traces leave out DNS-timeout senders, which would only
measure policyd-spf's 20 s lookup limit.

    .venv/bin/python -m bench.peers [--seconds 5] [--connection-counts 4,16,64,256] [--border-messages 400000]
        (bench/run_all runs it)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dns.zone

from bench import load, minimal
from bench.border import BorderWorkload, merge_zones
from bench.workload import DNSBL, REGISTRY, Workload
from testsupport.dnsserver import TestDnsServer, Zones
from testsupport.processes import Checkid, free_port, wait_for_port, wait_until, world_readable_tmpdir

ROOT = Path(__file__).resolve().parent.parent
#: the traces: the small one (bench/workload.py, a few hundred senders, fits every cache) and a
#: border MTA's day (bench/border.py)
TRACES = ("small", "border")
PEER = {"policy": "policyd-spf", "milter": "pyspf-milter"}
#: the ceiling each protocol's rows are divided by (bench/minimal.py), and checkid's own null
#: server (bench/nullserver.py)
CEILING = {"policy": "minimal", "msgpack-rpc": "minimal", "milter": "libmilter"}
#: what each server is called in the tables
LABELS = {"minimal": "minimal server (the ceiling)", "null": "checkid's null server", "checkid": "checkid",
          "policyd-spf": "policyd-spf", "libmilter": "libmilter C null milter, unix socket (the ceiling)",
          "libmilter-tcp": "libmilter C null milter, TCP", "checkid-unix": "checkid, unix socket",
          "pyspf-milter": "pyspf-milter"}


@dataclass(frozen=True)
class Run:
    """One row: a server of a protocol, driven with a trace over ``connections`` at a time."""
    protocol: str
    server: str
    trace: str
    connections: int


def plan(args: argparse.Namespace) -> list[Run]:
    """Every row, in the order they run: per protocol the ceiling first, then the null server
    and checkid at each connection count, then the peers."""
    traces = ["small", "border"] if args.border_messages else ["small"]
    out = []
    for protocol in ("policy", "msgpack-rpc"):
        for n in args.connection_counts:
            out += [Run(protocol, "minimal", "small", n), Run(protocol, "null", "small", n)]
            out += [Run(protocol, "checkid", trace, n) for trace in traces]
        if protocol == "policy":
            # one process per connection: 4 is its better figure on 2 cores, the ratio takes its best row
            out += [Run(protocol, "policyd-spf", trace, n) for trace in traces for n in (args.connections, 4)]
    for n in args.sessions:
        out += [Run("milter", server, "small", n) for server in ("libmilter", "libmilter-tcp", "null")]
        out += [Run("milter", server, trace, n) for server in ("checkid", "checkid-unix") for trace in traces]
        out.append(Run("milter", "pyspf-milter", "small", n))
    return out


def rss_kib(parent: int, prefix: str = "", field: str = "VmRSS") -> list[int]:
    """Resident set sizes (KiB) of ``parent``'s children whose process name starts with
    ``prefix``: ``field`` of /proc/PID/status (``VmRSS``; ``RssAnon`` is the process's own
    memory, ``RssFile`` mapped files: libraries and the shared LMDB cache's pages, which
    every worker shares with the others and the page cache)."""
    out: list[int] = []
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in children:
        try:
            if not Path(f"/proc/{pid}/comm").read_text().startswith(prefix):
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        out.extend(int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{field}:"))
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
  # one query per name to the stub (minimisation would ask for each label of a DNSBL name on
  # the way down: several queries per cold client address, all to the Python test server)
  qname-minimisation: no
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
    sources = [workload.zones()]
    requests = {"small": [r for r in workload.requests if r.cls != "timeout"]}
    results: dict[str, Any] = {}
    if args.border_messages:
        border = BorderWorkload(args.border_messages, args.border_domains, args.seed)
        sources.append(border.zones())
        requests["border"] = border.requests
        results["border"] = border.shape()
    zones = Zones()
    for origin, text in merge_zones(*sources).items():
        zones.add_zone(dns.zone.from_text(text, origin=origin, relativize=False))
    traces = {(protocol, trace): load.write_trace(protocol, reqs, workdir / f"{protocol}-{trace}.bin")
              for protocol in ("policy", "msgpack-rpc", "milter") for trace, reqs in requests.items()}
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[tuple[str, str], int] = {}
    unix: dict[str, Path] = {"libmilter": workdir / "libmilter.sock", "checkid-unix": workdir / "checkid-milter.sock"}
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
            for protocol in ("policy", "msgpack-rpc"):
                ports[(protocol, "minimal")] = free_port()
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.minimal", "--protocol", protocol, "--port",
                     str(ports[(protocol, "minimal")]), "--workers", str(args.workers)], cwd=ROOT))
            milter = minimal.nullmilter()
            ports[("milter", "libmilter-tcp")] = free_port()
            procs.append(subprocess.Popen([str(milter), f"unix:{unix['libmilter']}"]))
            procs.append(subprocess.Popen([str(milter), f"inet:{ports[('milter', 'libmilter-tcp')]}@127.0.0.1"]))
            ports[("policy", "policyd-spf")] = free_port()
            procs.append(subprocess.Popen(["socat", f"TCP-LISTEN:{ports[('policy', 'policyd-spf')]},bind=127.0.0.1,"
                                           "reuseaddr,fork,backlog=1024", "EXEC:/usr/bin/policyd-spf"],
                                          stderr=subprocess.DEVNULL))
            ports[("milter", "pyspf-milter")] = free_port()
            (workdir / "pyspf-milter.conf").write_text(
                f"debugLevel = 0\nTestOnly = 1\nHELO_reject = Fail\nMail_From_reject = Fail\n"
                f"Socket = inet:{ports[('milter', 'pyspf-milter')]}@127.0.0.1\nPidFile = {workdir}/pyspf-milter.pid\n"
                f"UserID = pyspf-milter\nInternalHosts = 127.0.0.1\n")
            procs.append(subprocess.Popen(["pyspf-milter", str(workdir / "pyspf-milter.conf")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            listen = f'[[listen]]\nprotocol = "milter"\naddress = "unix:{unix["checkid-unix"]}"\n'
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
                for path in unix.values():
                    wait_until(path.exists, f"a milter listening on {path}")
                if args.border_messages:
                    # warm: one full pass of the day's trace (every request once, spread over
                    # the connections), so every row after it is after a full pass
                    began = time.monotonic()
                    result = load.run("policy", ports[("policy", "checkid")], traces[("policy", "border")],
                                      max(args.connection_counts), args.warm_pass_seconds,
                                      max_requests=len(requests["border"]))
                    results["border_pass"] = {**asdict(result), "rate": result.rate,
                                              "wall": time.monotonic() - began}
                # and the small trace once, whatever the border pass left in the caches
                load.run("policy", ports[("policy", "checkid")], traces[("policy", "small")], args.connections,
                         args.warm_pass_seconds, max_requests=len(requests["small"]))
                rows = []
                for run in plan(args):
                    trace = traces[(run.protocol, run.trace)]
                    sock = unix.get(run.server)
                    port = 0 if sock else ports[(run.protocol, run.server)]
                    # the TCP libmilter waits out a delayed ACK per session (about 40 ms): its
                    # rows are capped by a tenth of the sessions, not to take minutes
                    cap = max(1, args.max_requests // 10) if run.server == "libmilter-tcp" and args.max_requests \
                        else args.max_requests
                    load.run(run.protocol, port, trace, run.connections, args.warm, max_requests=cap, unix=sock)
                    result = load.run(run.protocol, port, trace, run.connections, args.seconds, max_requests=cap,
                                      unix=sock)
                    rows.append({**asdict(run), **asdict(result), "rate": result.rate})
                results["runs"] = rows
                # the sweep's 100 %: checkid's small-trace row at the sweep's connections (its best
                # small-trace row when that count has none)
                top = best_rate(results, "policy", "checkid", "small", args.connections) \
                    or best_rate(results, "policy", "checkid", "small")
                sweep = []
                for share in args.loads:
                    result = load.run("policy", ports[("policy", "checkid")], traces[("policy", "small")],
                                      args.connections, args.sweep_seconds, rate=share * top,
                                      max_requests=args.max_requests)
                    sweep.append({"share": share, "offered": share * top, **asdict(result), "rate": result.rate})
                results["sweep"] = sweep
                # p99 at 70 % of each connection count's own maximum, on each trace
                at70 = []
                for r in rows:
                    if r["protocol"] == "policy" and r["server"] == "checkid":
                        result = load.run("policy", ports[("policy", "checkid")], traces[("policy", r["trace"])],
                                          r["connections"], args.sweep_seconds, rate=0.7 * r["rate"],
                                          max_requests=args.max_requests)
                        at70.append({"trace": r["trace"], "connections": r["connections"], "offered": 0.7 * r["rate"],
                                     **asdict(result), "rate": result.rate})
                results["at70"] = at70
                results["rss"] = {"checkid": rss_kib(checkid.proc.pid, "checkid-w"),
                                  "null": rss_kib(nulls["policy"].pid)}
                results["rss_parts"] = {field: rss_kib(checkid.proc.pid, "checkid-w", field)
                                        for field in ("RssAnon", "RssFile", "RssShmem")}
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
    parser = argparse.ArgumentParser(description="checkid vs the limits, the null servers and the peers")
    ints = lambda t: [int(x) for x in t.split(",")]  # noqa: E731
    parser.add_argument("--seconds", type=float, default=5.0, help="each measured run")
    parser.add_argument("--warm", type=float, default=2.0, help="each warm-up run before it")
    # 16 is the row the sweep and issue 6's goals use: persistent connections are spread over
    # the workers' SO_REUSEPORT slots by a hash of their ports, and with 4 one worker often
    # gets 3 or all of them
    parser.add_argument("--connections", type=int, default=16, help="the sweep's policy connections")
    # Postfix holds one policy connection per smtpd process: 100+ is normal at an ISP
    parser.add_argument("--connection-counts", type=ints, default=[4, 16, 64, 256],
                        help="policy and msgpack-rpc rows, connections at a time")
    parser.add_argument("--sessions", type=ints, default=[4], help="concurrent milter sessions, per row")
    parser.add_argument("--workers", type=int, default=2, help="checkid's and the Python limits'")
    parser.add_argument("--senders", type=int, default=500, help="the small trace's senders")
    parser.add_argument("--requests", type=int, default=20_000, help="the small trace's requests")
    parser.add_argument("--border-messages", type=int, default=400_000,
                        help="the border trace's messages (0: no border rows)")
    parser.add_argument("--border-domains", type=int, default=30_000)
    # the cold pass runs at the test DNS server's pace: about 650 decisions/s on a busy 2-core
    # machine, 16 minutes for the default day
    parser.add_argument("--warm-pass-seconds", type=float, default=1800.0,
                        help="cap on the border trace's full warm-up pass")
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
    rows = plan(args)
    at70 = sum(1 for r in rows if r.protocol == "policy" and r.server == "checkid")
    budget = ((args.seconds + args.warm) * len(rows) + args.sweep_seconds * (len(args.loads) + at70)
              + (args.warm_pass_seconds if args.border_messages else 0) + 600)
    out = subprocess.run(["unshare", "-mn", sys.executable, "-m", "bench.peers", *argv], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=budget)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-4000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    """The tables: per protocol every row with its ratio to the ceiling and to checkid's null
    server at the same connection count, and to the peer's best row; the sweep; p99 at 70 %."""
    v = results["versions"]
    out = [f"Small trace: {args.requests} requests from {args.senders} senders (seed {args.seed}, bench/workload.py), "
           "DNS-timeout senders left out."]
    if "border" in results:
        b, p = results["border"], results["border_pass"]
        classes = ", ".join(f"{cls} {share * 100:.1f} %" for cls, share in b["classes"].items())
        out[0] += (f" Border trace (bench/border.py, seed {args.seed}): {b['messages']:,} messages, "
                   f"{b['requests']:,} requests (one per recipient), {b['client_addresses']:,} distinct client "
                   f"addresses ({b['listed_addresses']:,} on the DNSBL), {b['sender_domains']:,} sender domains "
                   f"(Zipf); requests by class: {classes}. Its rows come after "
                   f"{'one full pass' if p['requests'] >= b['requests'] else '**a partial pass** (capped by --warm-pass-seconds)'}"
                   f" of it through checkid's policy listener ({p['requests']:,} requests at "
                   f"{max(args.connection_counts)} connections in {p['wall']:.0f} s, {p['rate']:,.0f}/s, {p['errors']} "
                   f"errors, p99 {ms(p['p99'])}: the caches filled cold, through Unbound).")
    out[0] += (f" Policy and msgpack-rpc: one request in flight per connection; milter: whole sessions, a new "
               f"connection each (one RCPT per recipient). checkid, its null servers and the Python limits with "
               f"{args.workers} workers; {args.warm:g} s warm-up then {args.seconds:g} s measured per row. Peers: "
               f"postfix-policyd-spf-python {v['postfix-policyd-spf-python']}, pyspf-milter {v['pyspf-milter']}, "
               f"Unbound {v['unbound']}.")
    out.append("")
    units = {"policy": "decisions/s", "msgpack-rpc": "decisions/s", "milter": "sessions/s"}
    by_protocol: dict[str, list[dict[str, Any]]] = {}
    for r in results["runs"]:
        by_protocol.setdefault(r["protocol"], []).append(r)
    for protocol, rows in by_protocol.items():
        peer = PEER.get(protocol)
        best = max((r["rate"] for r in rows if r["server"] == peer), default=0.0)
        ceiling = {r["connections"]: r["rate"] for r in rows if r["server"] == CEILING[protocol]}
        null = {r["connections"]: r["rate"] for r in rows if r["server"] == "null"}
        head = (f"| {protocol} server | trace | connections | {units[protocol]} | p50 | p90 | p99 | p99.9 | errors "
                f"| vs the ceiling | vs checkid's null server |")
        sep = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        if peer:
            head += f" vs {peer} (best row) |"
            sep += "---:|"
        out += [head, sep]
        for r in rows:
            n = r["connections"]
            line = (f"| {LABELS[r['server']]} | {r['trace']} | {n} | {r['rate']:,.0f} | {ms(r['p50'])} | "
                    f"{ms(r['p90'])} | {ms(r['p99'])} | {ms(r['p999'])} | {r['errors']} | "
                    f"{ratio(r['rate'], ceiling.get(n))} | {ratio(r['rate'], null.get(n))} |")
            if peer:
                line += f" {ratio(r['rate'], best)} |"
            out.append(line)
        out.append("")
    out += [f"Offered load sweep, checkid through the policy protocol, small trace, {args.connections} connections "
            "(latency from each request's scheduled send time):", "",
            "| offered load | offered/s | achieved/s | p50 | p90 | p99 | p99.9 | errors |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["sweep"]:
        out.append(f"| {r['share'] * 100:.0f} % | {r['offered']:,.0f} | {r['rate']:,.0f} | {ms(r['p50'])} | "
                   f"{ms(r['p90'])} | {ms(r['p99'])} | {ms(r['p999'])} | {r['errors']} |")
    out += ["", "checkid through the policy protocol at 70 % of each row's own maximum above:", "",
            "| trace | connections | offered/s | achieved/s | p50 | p90 | p99 | p99.9 | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["at70"]:
        out.append(f"| {r['trace']} | {r['connections']} | {r['offered']:,.0f} | {r['rate']:,.0f} | {ms(r['p50'])} | "
                   f"{ms(r['p90'])} | {ms(r['p99'])} | {ms(r['p999'])} | {r['errors']} |")
    rss = results["rss"]
    out += ["", f"Worker RSS after the run: checkid {', '.join(f'{k / 1024:.1f} MiB' for k in rss['checkid'])}; "
            f"null server worker {', '.join(f'{k / 1024:.1f} MiB' for k in rss['null'])} (Python, uvloop and the "
            "protocol code, no engine)."]
    parts = results.get("rss_parts")
    if parts:
        out[-1] += (" Of checkid's: its own memory (RssAnon) "
                    f"{', '.join(f'{k / 1024:.1f} MiB' for k in parts['RssAnon'])}; mapped files (RssFile: "
                    "libraries and the pages of the shared LMDB cache read so far, shared by every worker and "
                    f"the page cache) {', '.join(f'{k / 1024:.1f} MiB' for k in parts['RssFile'])}; shared memory "
                    f"(RssShmem) {', '.join(f'{k / 1024:.1f} MiB' for k in parts['RssShmem'])}.")
    return "\n".join(out)


def ratio(rate: float, reference: float | None) -> str:
    """``rate`` as a multiple of ``reference``; blank without one."""
    return f"{rate / reference:.2f}×" if reference else ""


def best_rate(results: dict[str, Any], protocol: str, server: str, trace: str | None = None,
         connections: int | None = None) -> float:
    """The best rate among the rows of ``server`` (on ``trace``, at ``connections``, when given)."""
    return max((r["rate"] for r in results["runs"] if r["protocol"] == protocol and r["server"] == server
                and trace in (None, r["trace"]) and connections in (None, r["connections"])), default=0.0)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


if __name__ == "__main__":
    if os.environ.get("CHECKID_BENCH_NS") == "1":
        inside(parse_args())
    else:
        main()
