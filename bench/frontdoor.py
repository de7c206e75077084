"""The SMTP front door beside Haraka and the backend alone, in one run (issue 11).

Every row sends the same whole SMTP sessions (banner, EHLO, MAIL, RCPT, DATA with a small
message, QUIT; a new connection each, one command at a time) to one target, and every target
ends at the same backend, Postfix's ``smtp-sink``:

- ``smtp-sink`` direct: the backend alone, the limit of the stack;
- Haraka (npm ``Haraka``, installed by scripts/bench-deps into .bench/haraka) with only
  ``queue/smtp_forward`` to that smtp-sink, one worker per core (``nodes``), configured from
  bench/haraka/ (no plugin that asks DNS; its core's reverse lookup answered by a local hook).
  Haraka's smtp_client leaves Nagle's algorithm on, so each message's last write waits for the
  backend's delayed ACK; the row "Haraka, TCP_NODELAY" turns it off (bench/haraka/plugins/
  nodelay.js) to show Haraka's best case, and ratios are taken to Haraka's best row;
- checkid's front door (``checkid serve``, a listener ``protocol = "smtp"``, ``backend_client =
  "none"`` since smtp-sink takes no XCLIENT) with the project's test DNS server and zones: the
  client 192.0.2.1 says HELO example.com, a registered ID whose SPF passes, so after the
  warm-up every decision is a warm ACCEPT. A front door that does not start is reported as
  "not available" and the other rows still run.

Everything runs inside a private network namespace (``unshare -n``, entered by this script
itself): only its loopback exists there, 192.0.2.1 is added to it so the load client can
connect from the address the decision needs (to 127.0.0.1), and its TIME_WAIT reuse and port
range are the namespace's own. The load is bench/c/smtpsessions.c, a compiled client, not
Postfix's smtp-source: smtp-source reports no per-session latency and cannot bind a source
address, and a Python client would take the cores the servers need. Bounded by seconds and by
a session count; every process started is stopped.

    .venv/bin/python -m bench.frontdoor [--seconds 5] [--warm 2] [--connections 16]
        [--max-sessions N] [--targets smtp-sink,haraka,haraka-nodelay,checkid]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from testsupport.dnsserver import TestDnsServer, Zones
from testsupport.processes import Checkid, free_port, wait_for_port, world_readable_tmpdir

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".bench-build"
HARAKA_HOME = ROOT / ".bench" / "haraka"
HARAKA = HARAKA_HOME / "node_modules" / "Haraka"
ZONES = ROOT / "testsupport" / "zones"
#: the targets in the order they run, and their row names
TARGETS = {"smtp-sink": "smtp-sink direct", "haraka": "Haraka (queue/smtp_forward)",
           "haraka-nodelay": "Haraka, TCP_NODELAY", "checkid": "checkid front door"}
#: the client: a registered ID (testsupport/zones/registry.test.zone) whose SPF allows it
CLIENT, HELO, SENDER, RECIPIENT = "192.0.2.1", "example.com", "bounce@example.com", "user@example.org"
#: set inside the namespace, so the script knows it was re-entered
INSIDE = "CHECKID_FRONTDOOR_NS"


@dataclass
class Result:
    sessions: int
    errors: int
    seconds: float
    #: session latency percentiles, seconds (connect to the 221 of QUIT)
    p50: float
    p90: float
    p99: float
    p999: float
    #: the client's description of the first failed session, "" when none failed
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.sessions / self.seconds if self.seconds else 0.0


def message() -> bytes:
    """A small message (about 1 KB), one line dot-stuffed, ended by CRLF.CRLF."""
    head = (f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: front door bench\r\n"
            "Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n\r\n")
    body = "The quick brown fox jumps over the lazy dog, and then over the lazy dog again.\r\n" * 12
    return (head + body + "..a line that starts with a dot, stuffed\r\n.\r\n").encode()


def client() -> Path:
    """The compiled session client, built (once per source change) under .bench-build/."""
    source = ROOT / "bench" / "c" / "smtpsessions.c"
    binary = BUILD / "smtpsessions"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


def run(port: int, message_file: Path, connections: int, seconds: float, max_sessions: int = 0,
        source: str = CLIENT) -> Result:
    """Play sessions against 127.0.0.1:``port`` for ``seconds`` or ``max_sessions`` (0: no bound)."""
    args = [str(client()), "127.0.0.1", str(port), str(connections), str(seconds), str(max_sessions), source,
            HELO, SENDER, RECIPIENT, str(message_file)]
    # the client's own receive timeout is 30 s per reply; a hung run still ends
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"smtpsessions failed: {out.stderr.strip()}")
    done, errors, elapsed, p50, p90, p99, p999 = out.stdout.split()
    return Result(int(done), int(errors), float(elapsed), int(p50) / 1e6, int(p90) / 1e6, int(p99) / 1e6,
                  int(p999) / 1e6, out.stderr.strip())


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A server in its own process group, so that stopping it reaches every process it forks."""
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to ``proc``'s process group, then SIGKILL if it has not exited within 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by a leader that exited
    except ProcessLookupError:
        pass
    proc.wait(5)


def smtp_sink(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """Postfix's smtp-sink on 127.0.0.1:``port``, backlog 1000 (it refuses to run as root without -u)."""
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = start(["smtp-sink", *user, f"127.0.0.1:{port}", "1000"], workdir / "smtp-sink.log")
    wait_for_port(port, proc)
    return proc


def haraka_config(workdir: Path, port: int, backend: int, nodes: int, nodelay: bool) -> Path:
    """Haraka's folder (config/ and plugins/ from bench/haraka, ports and workers filled in)."""
    home = workdir / ("haraka-nodelay" if nodelay else "haraka")
    shutil.copytree(ROOT / "bench" / "haraka", home)
    for path in (home / "config").iterdir():
        text = path.read_text().replace("@LISTEN@", f"127.0.0.1:{port}").replace("@NODES@", str(nodes))
        path.write_text(text.replace("@BACKEND_PORT@", str(backend)))
    if nodelay:
        plugins = home / "config" / "plugins"
        plugins.write_text("nodelay\n" + plugins.read_text())
    return home


def haraka(workdir: Path, port: int, backend: int, nodes: int, nodelay: bool) -> subprocess.Popen[bytes]:
    """Haraka on 127.0.0.1:``port`` forwarding to smtp-sink on ``backend``, with ``nodes`` workers."""
    if not (HARAKA / "bin" / "haraka").exists():
        raise RuntimeError(f"Haraka is not installed in {HARAKA_HOME}: run sh scripts/bench-deps")
    home = haraka_config(workdir, port, backend, nodes, nodelay)
    proc = start(["node", str(HARAKA / "bin" / "haraka"), "-c", str(home)], home / "haraka.log")
    wait_for_port(port, proc)
    return proc


def checkid_toml(port: int, backend: int, dns: str, workers: int, workdir: Path) -> str:
    """checkid's configuration: the front door on ``port`` relaying to smtp-sink on ``backend``,
    the test DNS server at ``dns`` (the default pre-screen DNSBL and the registry are its zones)."""
    return f"""[[listen]]
protocol = "smtp"
address = "127.0.0.1:{port}"
backend = "127.0.0.1:{backend}"
backend_client = "none"
[server]
workers = {workers}
log_level = "warning"
state_dir = "{workdir / 'state'}"
[dns]
nameservers = ["{dns}"]
[registry]
zone = "registry.test"
"""


def inside(args: argparse.Namespace) -> None:
    """In the namespace: start the backend and each target in turn, measure, print JSON."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{CLIENT}/32", "dev", "lo"], check=True)
    # a new connection per session leaves a TIME_WAIT per session on each hop: let connect()
    # reuse them and widen the ephemeral range (both settings are this namespace's alone)
    Path("/proc/sys/net/ipv4/tcp_tw_reuse").write_text("1\n")
    Path("/proc/sys/net/ipv4/ip_local_port_range").write_text("10000 65000\n")
    workdir = world_readable_tmpdir("checkid-frontdoor-")
    message_file = workdir / "message.eml"
    message_file.write_bytes(message())
    client()
    rows: dict[str, dict[str, Any]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        backend = free_port()
        procs.append(smtp_sink(workdir, backend))
        with TestDnsServer(Zones(ZONES)) as dns:
            for target in args.targets:
                port = backend
                proc: subprocess.Popen[bytes] | None = None
                daemon: Checkid | None = None
                try:
                    if target.startswith("haraka"):
                        port = free_port()
                        proc = haraka(workdir, port, backend, args.workers, target == "haraka-nodelay")
                    elif target == "checkid":
                        port = free_port()
                        daemon = Checkid(checkid_toml(port, backend, dns.address, args.workers, workdir), workdir,
                                         [port])
                        try:
                            daemon.start()
                        except Exception as e:
                            if daemon.proc is not None:
                                daemon.stop()
                            rows[target] = {"unavailable": f"{e}; log: {tail(daemon.log)}"}
                            daemon = None
                            continue
                    run(port, message_file, args.connections, args.warm_cap, args.warm_sessions)
                    result = run(port, message_file, args.connections, args.seconds, args.max_sessions)
                    rows[target] = {**asdict(result), "rate": result.rate}
                    if result.errors:
                        logs = {"checkid": daemon.log if daemon else None, "smtp-sink": workdir / "smtp-sink.log"}
                        rows[target]["log"] = tail(logs.get(target) or workdir / target / "haraka.log")
                finally:
                    if proc is not None:
                        stop(proc)
                    if daemon is not None:
                        daemon.stop()
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"rows": rows, "versions": versions()}))


def tail(log: Path, lines: int = 3) -> str:
    """The last ``lines`` lines of a server's log, on one line, for the report."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return " / ".join(line.strip() for line in text)[:600]


def versions() -> dict[str, str]:
    """Haraka's, Node.js's and Postfix's versions, for the report."""
    out = {"haraka": "?", "node": "?", "postfix": "?"}
    try:
        out["haraka"] = json.loads((HARAKA / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        pass
    node = subprocess.run(["node", "--version"], capture_output=True, text=True)
    out["node"] = node.stdout.strip().lstrip("v") or "?"
    postfix = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True)
    out["postfix"] = postfix.stdout.strip() or "?"
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="the SMTP front door beside Haraka and smtp-sink direct")
    parser.add_argument("--seconds", type=float, default=5.0, help="each measured run (a bound with --max-sessions)")
    parser.add_argument("--warm-cap", type=float, default=30.0, help="bound on each warm-up run, seconds")
    parser.add_argument("--warm-sessions", type=int, default=500, help="sessions in each warm-up run")
    parser.add_argument("--connections", type=int, default=16, help="concurrent sessions")
    parser.add_argument("--workers", type=int, default=2, help="checkid's workers and Haraka's nodes")
    parser.add_argument("--max-sessions", type=int, default=0,
                        help="end each measured run after this many sessions (0: after its seconds only)")
    parser.add_argument("--targets", type=lambda t: t.split(","), default=list(TARGETS),
                        help=f"comma-separated, of {', '.join(TARGETS)}")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    if args.connections < 1 or args.seconds <= 0 or args.warm_cap <= 0 or args.warm_sessions < 1:
        parser.error("--connections and --warm-sessions must be ≥ 1, --seconds and --warm-cap > 0")
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every target inside a fresh network namespace; return the results."""
    if os.environ.get(INSIDE) == "1":
        raise RuntimeError("already inside the benchmark namespace")
    argv = [f"--{k.replace('_', '-')}={','.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()]
    budget = (args.seconds + args.warm_cap + 150) * len(args.targets) + 120
    out = subprocess.run(["unshare", "-n", sys.executable, "-m", "bench.frontdoor", *argv], cwd=ROOT,
                         env={**os.environ, INSIDE: "1"}, capture_output=True, text=True, timeout=budget)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-4000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measured(row: dict[str, Any]) -> bool:
    """Whether a row ran and completed sessions (latencies exist)."""
    return bool(row.get("sessions"))


def best_haraka(rows: dict[str, dict[str, Any]]) -> float:
    """Haraka's better sessions/s (the shipped row or the TCP_NODELAY one); 0 when neither ran."""
    return max((r["rate"] for name, r in rows.items() if name.startswith("haraka") and measured(r)), default=0.0)


def goals(rows: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, bool | None]]:
    """(figure, goal, measured, met: None when a row it needs did not run) for issue 11."""
    door, sink, best = rows.get("checkid", {}), rows.get("smtp-sink", {}), best_haraka(rows)
    speed, added = "front door sessions/s vs Haraka (its best row)", \
        "median session latency added by the front door, vs smtp-sink direct"
    if "unavailable" in door or not door:
        return [(speed, "≥ 1.5×", "not available", None), (added, "< 1 ms", "not available", None)]
    if not measured(door):
        return [(speed, "≥ 1.5×", "no session completed", False), (added, "< 1 ms", "no session completed", False)]
    out: list[tuple[str, str, str, bool | None]] = []
    if best:
        ratio = door["rate"] / best
        out.append((speed, "≥ 1.5×", f"{ratio:.2f}×", ratio >= 1.5 and not door["errors"]))
    else:
        out.append((speed, "≥ 1.5×", "Haraka not measured", None))
    if measured(sink):
        more = door["p50"] - sink["p50"]
        out.append((added, "< 1 ms", ms(more), more < 0.001 and not door["errors"]))
    else:
        out.append((added, "< 1 ms", "smtp-sink not measured", None))
    return out


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    rows: dict[str, dict[str, Any]] = results["rows"]
    v = results["versions"]
    bound = f"{args.seconds:g} s" + (f" or {args.max_sessions} sessions" if args.max_sessions else "")
    out = [f"Whole sessions (banner, EHLO, MAIL, RCPT, DATA with {len(message())} bytes, QUIT), a new connection "
           f"each, {args.connections} at a time, one command at a time, from {CLIENT} (HELO {HELO}); "
           f"{args.warm_sessions} sessions of warm-up, then {bound} measured per row. Backend: Postfix "
           f"{v['postfix']} smtp-sink; Haraka {v['haraka']} on Node.js {v['node']} with {args.workers} nodes; "
           f"checkid with {args.workers} workers. Latency: connect to the 221 of QUIT.", "",
           "| target | sessions/s | p50 | p90 | p99 | p99.9 | errors | median added vs smtp-sink direct "
           "| vs Haraka (best row) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    sink, best = rows.get("smtp-sink", {}), best_haraka(rows)
    notes = []
    for target, r in rows.items():
        name = TARGETS[target]
        if "unavailable" in r:
            out.append(f"| {name} | not available | | | | | | | |")
            notes.append(f"{name}: not available: {r['unavailable']}")
            continue
        if r["errors"]:
            notes.append(f"{name}: {r['errors']} failed sessions; {r['first_error']}; log: {r.get('log', '')}")
        if not measured(r):
            out.append(f"| {name} | 0 | — | — | — | — | {r['errors']} | — | — |")
            continue
        added = ms(r["p50"] - sink["p50"]) if measured(sink) and target != "smtp-sink" else ""
        versus = f"{r['rate'] / best:.2f}×" if best and target != "smtp-sink" else ""
        out.append(f"| {name} | {r['rate']:,.0f} | {ms(r['p50'])} | {ms(r['p90'])} | {ms(r['p99'])} | "
                   f"{ms(r['p999'])} | {r['errors']} | {added} | {versus} |")
    out += [""] + [f"- {note.replace('|', '/')}" for note in notes] + ([""] if notes else [])
    out += ["| figure (issue 11) | goal | measured | met |", "|---|---|---:|---|"]
    for what, goal, got, met in goals(rows):
        out.append(f"| {what} | {goal} | {got} | {'—' if met is None else 'yes' if met else '**no**'} |")
    return "\n".join(out)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def main() -> None:
    args = parse_args()
    print(report(measure(args), args))


if __name__ == "__main__":
    if os.environ.get(INSIDE) == "1":
        inside(parse_args())
    else:
        main()
