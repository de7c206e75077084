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

And as milters, whole sessions with the compiled session client (bench/c/miltersessions.c,
a new connection per session, as an MTA plays them): pyspf-milter (Debian, libmilter via
pymilter, SPF at MAIL FROM), checkid's milter listener, and the null milter.

policyd-spf only checks SPF (HELO and MAIL FROM); checkid runs its whole pipeline (DNSBL,
registry, SPF, reputation). The trace leaves out the DNS-timeout senders, which would only
measure policyd-spf's 20 s lookup limit.

    .venv/bin/python -m bench.peers [--seconds 10] [--connections 4]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import dns.zone

from bench.workload import DNSBL, REGISTRY, Workload
from checkid.protocols.postfix_policy.codec import encode_request
from tests.dnsserver import TestDnsServer, Zones
from tests.processes import Checkid, free_port, wait_for_port, world_readable_tmpdir

ROOT = Path(__file__).resolve().parent.parent
C_CLIENTS = ROOT / "bench" / "c"


def build(workdir: Path, name: str) -> Path:
    binary = workdir / name
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(C_CLIENTS / f"{name}.c")], check=True)
    return binary


def sessions_file(workload: Workload, path: Path) -> Path:
    """Whole milter sessions for the trace: u32 count, then u32-length-prefixed packets."""
    from checkid.protocols.milter import codec
    from checkid.protocols.milter.events import (Body, Connect, Data, EndOfHeaders, EndOfMessage, Header, Helo,
                                                 Mail, OptNeg, Quit, Rcpt)
    with open(path, "wb") as f:
        for r in workload.requests:
            if r.cls == "timeout":
                continue
            cmds = [OptNeg(6, 0x1FF, 0x1FFFFF), Connect(r.helo, "4", 25, r.ip), Helo(r.helo), Mail((f"<{r.sender}>",)),
                    Rcpt((f"<{r.rcpt}>",)), Data(), Header("From", r.sender), Header("To", r.rcpt),
                    Header("Subject", "bench"), EndOfHeaders(), Body(b"hello\r\n" * 20), EndOfMessage(), Quit()]
            packets = [codec.encode_command(c) for c in cmds]
            f.write(struct.pack("!I", len(packets)))
            for packet in packets:
                f.write(struct.pack("!I", len(packet)) + packet)
    return path


def requests_file(workload: Workload, path: Path) -> Path:
    with open(path, "wb") as f:
        for n, r in enumerate(workload.requests):
            if r.cls == "timeout":
                continue
            f.write(encode_request({
                "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
                "client_address": r.ip, "client_name": "unknown", "helo_name": r.helo, "sender": r.sender,
                "recipient": r.rcpt, "instance": f"b{n}", "queue_id": "", "recipient_count": "0",
            }))
    return path


def run_load(client: Path, port: int, connections: int, seconds: float, reqs: Path, rate: float | None = 0
             ) -> dict[str, float]:
    """Run a C client; ``rate`` None for the session client (it takes no rate)."""
    args = [str(client), "127.0.0.1", str(port), str(connections), str(seconds)]
    args += [str(reqs)] if rate is None else [str(rate), str(reqs)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120, check=True).stdout.split()
    done, errors, elapsed, p50, p90, p99, p999 = out
    return {"rate": int(done) / float(elapsed), "errors": int(errors), "p50": int(p50) / 1e3, "p90": int(p90) / 1e3,
            "p99": int(p99) / 1e3, "p999": int(p999) / 1e3}


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
    zones = Zones(workdir)
    for origin, text in workload.zones().items():
        zones.add_zone(dns.zone.from_text(text, origin=origin, relativize=False))
    client = build(workdir, "loadclient")
    milter_client = build(workdir, "miltersessions")
    reqs = requests_file(workload, workdir / "requests.txt")
    sessions = sessions_file(workload, workdir / "sessions.bin")
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, float]] = {}
    with TestDnsServer(zones, rtt=args.rtt) as server:
        try:
            procs.append(unbound(workdir, server.port))
            null_port, peer_port = free_port(), free_port()
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.nullserver", "--protocol", "policy", "--port",
                                           str(null_port), "--workers", "2"], cwd=ROOT))
            procs.append(subprocess.Popen(["socat", f"TCP-LISTEN:{peer_port},bind=127.0.0.1,reuseaddr,fork",
                                           "EXEC:/usr/bin/policyd-spf"], stderr=subprocess.DEVNULL))
            port, milter_port, null_milter, peer_milter = free_port(), free_port(), free_port(), free_port()
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.nullserver", "--protocol", "milter", "--port",
                                           str(null_milter), "--workers", "2"], cwd=ROOT))
            (workdir / "pyspf-milter.conf").write_text(
                f"debugLevel = 0\nTestOnly = 1\nHELO_reject = Fail\nMail_From_reject = Fail\n"
                f"Socket = inet:{peer_milter}@127.0.0.1\nPidFile = {workdir}/pyspf-milter.pid\n"
                f"UserID = pyspf-milter\nInternalHosts = 127.0.0.1\n")
            procs.append(subprocess.Popen(["pyspf-milter", str(workdir / "pyspf-milter.conf")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            toml = f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{port}"
[[listen]]
protocol = "milter"
address = "127.0.0.1:{milter_port}"
[server]
workers = 2
log_level = "warning"
state_dir = "{workdir / 'state'}"
[dns]
nameservers = ["127.0.0.1"]
[registry]
zone = "{REGISTRY}"
[prescreen]
dnsbl = [{{ zone = "{DNSBL}" }}]
"""
            for p in (null_port, peer_port, null_milter, peer_milter):
                wait_for_port(p)
            with Checkid(toml, workdir, [port, milter_port]):
                runs = [("null", null_port, client, reqs, 0), ("checkid", port, client, reqs, 0),
                        ("policyd-spf", peer_port, client, reqs, 0),
                        ("null milter", null_milter, milter_client, sessions, None),
                        ("checkid milter", milter_port, milter_client, sessions, None),
                        ("pyspf-milter", peer_milter, milter_client, sessions, None)]
                for name, p, c, data, rate in runs:
                    run_load(c, p, args.connections, args.warm, data, rate)  # warms Unbound and caches
                    results[name] = run_load(c, p, args.connections, args.seconds, data, rate)
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description="checkid vs policyd-spf vs the null server")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warm", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--senders", type=int, default=500)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rtt", type=float, default=0.0)
    args = parser.parse_args()
    if os.environ.get("CHECKID_BENCH_NS") != "1":
        env = {**os.environ, "CHECKID_BENCH_NS": "1"}
        out = subprocess.run(["unshare", "-mn", sys.executable, "-m", "bench.peers", *sys.argv[1:]], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=args.seconds * 6 + 600)
        if out.returncode != 0:
            sys.exit(out.stderr[-4000:])
        results = json.loads(out.stdout.strip().splitlines()[-1])
        report(results, args)
        return
    inside(args)


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(f"policy protocol, {args.connections} connections, warm Unbound, trace of {args.requests} requests "
          f"from {args.senders} senders (seed {args.seed})")
    _table(results, "server", "decisions/s", ("checkid", "policyd-spf", "null"))
    print(f"milter, whole sessions (a new connection each), {args.connections} concurrent")
    _table(results, "milter", "sessions/s", ("checkid milter", "pyspf-milter", "null milter"))


def _table(results: dict[str, dict[str, float]], what: str, unit: str, names: tuple[str, str, str]) -> None:
    """Rows for (checkid, peer, null), with the ratios to the peer and to the null server."""
    _, peer, null = names
    print()
    print(f"| {what} | {unit} | p50 | p90 | p99 | errors | vs {peer} | vs {null} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        r = results[name]
        print(f"| {name} | {r['rate']:,.0f} | {r['p50']:.2f} ms | {r['p90']:.2f} ms | {r['p99']:.2f} ms | "
              f"{r['errors']:.0f} | {r['rate'] / results[peer]['rate']:.2f}× | {r['rate'] / results[null]['rate']:.2f}× |")
    print()


if __name__ == "__main__":
    main()
