"""Every benchmark in one run; writes bench/RESULTS.md and bench/latency-vs-load.png.

    sh bench/run_all            (about 25 minutes on 2 cores, 16 of them the border trace's cold
                                 pass through the Python test DNS server; needs sh scripts/bench-deps)
    sh bench/run_all --smoke --out /tmp/b   (seconds: proves the suite runs, figures meaningless)

In order: the pytest-benchmark micro-benchmarks (bench/test_*.py), the front-ends beside
the limits (bench/minimal.py, the C null milter), the null servers and the peers, on the small
trace and a border MTA's day (bench/border.py), at 4 to 256 connections, with an offered-load
sweep, p99 at 70 % and worker memory (bench/peers.py, in a private namespace), the pre-fork runtime's scaling and shared cache
(bench/runtime.py), cold decisions at 20 ms DNS round trip (bench/cold.py), the SMTP
front door beside Haraka and smtp-sink (bench/frontdoor.py, 16 sessions at a time and one), and
DKIM at end of data beside dkimpy with the event-loop stall it causes (bench/dkim.py). Every
ratio is between figures of this one run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import cold, dkim, fleet, frontdoor, peers, runtime, scrapes
from bench.report import ROWS, micro_table, per_call

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("uvloop", "dnspython", "pyspf", "msgpack", "cachetools", "lmdb", "prometheus-client")


def micro(smoke: bool) -> dict[str, Any] | None:
    """The pytest-benchmark JSON (None in smoke mode: each benchmark runs once, untimed)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "micro.json"
        args = [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider"]
        args += ["--benchmark-disable"] if smoke else ["--benchmark-only", "--benchmark-min-rounds=50",
                                                      f"--benchmark-json={out}"]
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"micro-benchmarks failed:\n{done.stdout[-3000:]}")
        return None if smoke else dict(json.loads(out.read_text()))


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?"
    libs = ", ".join(f"{name} {metadata.version(name)}" for name in LIBRARIES)
    return (f"{cpu}, {os.cpu_count()} cores, {mem / 1024 / 1024:.0f} GiB; Linux {platform.release()}, Debian "
            f"{debian}; Python {platform.python_version()}; {libs}.")


def plot(sweep: list[dict[str, Any]], connections: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    x = [r["rate"] for r in sweep]
    for key, label in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9")):
        ax.plot(x, [r[key] * 1e3 for r in sweep], marker="o", label=label)
    ax.axhline(2.0, color="grey", linestyle="--", linewidth=1, label="goal: p99 ≤ 2 ms at 70 %")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("decisions/s achieved (offered 10 … 90 % of the maximum)")
    ax.set_ylabel("latency (ms, from scheduled send)")
    ax.set_title(f"checkid, policy protocol, warm cache, {connections} connections")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def goals(micro_data: dict[str, Any] | None, peer: dict[str, Any], peer_args: argparse.Namespace,
          run: dict[str, Any], cold_data: dict[str, dict[str, float]],
          dkim_data: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(figure, goal, measured, met) for each goal of issue 6, and issue 12's stall, on the rows
    issue 6 measured them on (the small trace, 16 connections, milter over TCP)."""
    out = []
    n = peer_args.connections
    sessions = peer_args.sessions[0]

    def ratio(what: str, got: float, reference: float, goal: float) -> None:
        r = got / reference if reference else float("nan")
        out.append((what, f"≥ {goal:g}×", f"{r:.2f}×", r >= goal))
    checkid_policy = peers.best_rate(peer, "policy", "checkid", "small", n)
    ratio("warm decisions/s, policy protocol, vs policyd-spf (its best row)", checkid_policy,
          peers.best_rate(peer, "policy", "policyd-spf", "small"), 14)
    ratio("warm decisions/s, policy protocol, vs the null server", checkid_policy,
          peers.best_rate(peer, "policy", "null", "small", n), 0.6)
    ratio("milter sessions/s vs pyspf-milter", peers.best_rate(peer, "milter", "checkid", "small", sessions),
          peers.best_rate(peer, "milter", "pyspf-milter", "small", sessions), 5)
    if micro_data is not None:
        rows = {b["name"]: b for b in micro_data["benchmarks"]}
        name = "test_warm_decision_registered_id_spf_pass"
        us = per_call(rows[name]) * 1e6
        out.append((f"in-process {ROWS[name][0]}, median", "≤ 25 µs", f"{us:.1f} µs", us <= 25))
    at70 = min(peer["sweep"], key=lambda r: abs(r["share"] - 0.7))
    out.append((f"p99 latency at {at70['share'] * 100:.0f} % of the maximum load (policy)", "≤ 2 ms",
                f"{at70['p99'] * 1e3:.2f} ms", at70["p99"] <= 0.002))
    for key, r in sorted(cold_data.items()):
        if key.startswith("depth"):
            out.append((f"cold decision, SPF chain {key}, median in RTTs", f"≤ {r['bound_rtts']:.0f}",
                        f"{r['median_rtts']:.2f}", r["median_rtts"] <= r["bound_rtts"]))
    per = run["queries_per_decision"]
    r = per[True] / per[False] if per[False] else float("nan")
    out.append(("upstream DNS queries per decision, 2 workers, shared layer on vs off", "≤ 0.55×", f"{r:.2f}×",
                r <= 0.55))
    out += dkim.goals(dkim_data)
    return out


def goals15(peer: dict[str, Any], cold_data: dict[str, dict[str, float]]) -> list[tuple[str, str, str, bool]]:
    """(figure, goal, measured, met) for each goal of issue 15: checkid's best row on the
    border trace (the small one without it) against the ceiling's and the peer's best rows."""
    trace = "border" if "border" in peer else "small"
    out = []

    def ratio(what: str, got: float, reference: float, goal: float) -> None:
        r = got / reference if reference else float("nan")
        out.append((what, f"≥ {goal:g}×", f"{r:.2f}×", r >= goal))
    policy = peers.best_rate(peer, "policy", "checkid", trace)
    ratio(f"policy warm decisions/s ({trace} trace) vs the minimal policy server", policy,
          peers.best_rate(peer, "policy", "minimal"), 0.5)
    ratio(f"policy warm decisions/s ({trace} trace) vs policyd-spf (its best row, same trace)", policy,
          peers.best_rate(peer, "policy", "policyd-spf", trace), 10)
    ratio(f"milter whole sessions/s ({trace} trace) vs the libmilter C null milter, unix socket",
          peers.best_rate(peer, "milter", "checkid-unix", trace), peers.best_rate(peer, "milter", "libmilter"), 0.6)
    ratio(f"milter whole sessions/s ({trace} trace) vs pyspf-milter, its best transport",
          max(peers.best_rate(peer, "milter", s, trace) for s in ("checkid", "checkid-unix")),
          peers.best_rate(peer, "milter", "pyspf-milter"), 6)
    for r in peer["at70"]:
        if r["trace"] == trace:
            out.append((f"p99 at 70 % of the maximum load, policy, {trace} trace, {r['connections']} connections",
                        "≤ 2 ms", f"{r['p99'] * 1e3:.2f} ms", r["p99"] <= 0.002))
    for key, r in sorted(cold_data.items()):
        if key.startswith("depth"):
            over = (r["median"] - r["bound_rtts"] * r["rtt"]) * 1e3
            out.append((f"cold decision, SPF chain {key}: time above (depth + 1) × RTT", "≤ 0.3 ms",
                        f"{over:.2f} ms", over <= 0.3))
    rss = max(peer["rss"]["checkid"], default=0) / 1024
    anon = max(peer.get("rss_parts", {}).get("RssAnon", []), default=0) / 1024
    out.append((f"worker memory after the {trace} trace (in-memory layer at its default size): its own "
                "(RssAnon); all of its RSS, shared LMDB pages and libraries included, beside it", "≤ 64 MiB",
                f"{anon:.1f} MiB (RSS {rss:.1f} MiB)", anon <= 64))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the suite runs, in seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="where RESULTS.md and the plot go")
    args = parser.parse_args()
    started = time.monotonic()
    smoke = args.smoke
    args.out.mkdir(parents=True, exist_ok=True)

    def step(what: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {what}", file=sys.stderr, flush=True)

    step("micro-benchmarks")
    micro_data = micro(smoke)
    step("front-ends beside the peers and the null servers")
    # a smoke run is bounded by request counts, its seconds only caps: a slow machine still
    # gets an answer into every row
    peer_args = peers.parse_args(["--seconds=60", "--warm=60", "--sweep-seconds=60", "--max-requests=40",
                                  "--loads=0.5,0.7", "--senders=50", "--requests=500", "--connection-counts=4,16",
                                  "--border-messages=300", "--border-domains=200", "--warm-pass-seconds=120"]
                                 if smoke else [])
    peer = peers.measure(peer_args)
    plot(peer["sweep"], peer_args.connections, args.out / "latency-vs-load.png")
    step("pre-fork runtime and the shared cache")
    rt = {"seconds": 60.0, "connections": 2, "ids": 40, "max_requests": 200} if smoke else \
        {"seconds": 8.0, "connections": 16, "ids": 1000}
    run = runtime.measure(**rt)
    step("cold decisions")
    rtt = 0.02
    cold_data = cold.measure(rtt, 2 if smoke else 20)
    step("SMTP front door beside Haraka and smtp-sink")
    fd_args = frontdoor.parse_args(["--seconds=60", "--warm-sessions=20", "--max-sessions=100"] if smoke else [])
    fd = frontdoor.report(frontdoor.measure(fd_args), fd_args)
    fd1_args = frontdoor.parse_args((["--seconds=60", "--warm-sessions=20", "--max-sessions=50"] if smoke else [])
                                    + ["--connections=1", "--targets=smtp-sink,checkid"])
    fd1 = frontdoor.report(frontdoor.measure(fd1_args), fd1_args)
    step("DKIM at end of data")
    dkim_data = dkim.measure(1, 1, 1, smoke=True) if smoke else dkim.measure()
    step("metrics scrapes beside decisions")
    scrape_args = (2.0, 200.0, 4, 50, 2_000) if smoke else (10.0, 500.0, 8, 1000, 200_000)
    scrape_data = scrapes.measure(*scrape_args)
    step("the fleet: the HAProxy hop and a Unbound hit")
    fleet_data = fleet.measure(2.0, 2, 1, 20, 1, max_requests=200) if smoke else fleet.measure()
    minutes = (time.monotonic() - started) / 60
    step("writing the report")

    command = "sh bench/run_all" + (f" --smoke --out {args.out}" if smoke else "")
    md = [
        "# Benchmark results", "",
        f"Written by `{command}` on {datetime.date.today().isoformat()} in {minutes:.1f} minutes (after "
        "`sh scripts/install --test && sh scripts/bench-deps`). Every ratio compares figures of this one run; "
        "load clients and servers share the machine's cores.", "",
        f"Machine: {machine()}", "",
        "## Goals (issue 6)", "",
        "| figure | goal | measured | met |", "|---|---|---:|---|",
        *[f"| {what} | {goal} | {got} | {'yes' if met else '**no**'} |"
          for what, goal, got, met in goals(micro_data, peer, peer_args, run, cold_data, dkim_data)],
        "",
        "## Goals (issue 15)", "",
        "| figure | goal | measured | met |", "|---|---|---:|---|",
        *[f"| {what} | {goal} | {got} | {'yes' if met else '**no**'} |" for what, goal, got, met in goals15(peer, cold_data)],
        "",
        "## Per-decision and per-call cost (in-process, pytest-benchmark)", "",
        "Each round runs a batch (100 decisions, or 1000 calls) on one uvloop loop, at least 50 rounds; the table "
        "divides the round median by the batch. A warm decision has every DNS answer cached (its test asserts "
        "that the DNS server saw no query while measured). References: pyspf's own check of the same record "
        "with a dict behind `spf.DNSLookup` (SPF evaluation alone); the bare minimum work on the same bytes for "
        "each codec; a plain dict lookup for the cache layers.", "",
        micro_table(micro_data) if micro_data is not None else "(smoke run: timings not taken)", "",
        "## Through each front-end, beside the limits, the null servers and the peers", "",
        "`bench/peers.py`, in a private network and mount namespace: Unbound (stub zone) in front of the "
        "project's test DNS server serving both generated traces' zones (`bench/workload.py`: a few hundred Zipf "
        "senders in set classes; `bench/border.py`: a border MTA's day, Zipf over sender domains, botnets mostly "
        "on the DNSBL, per-recipient requests; both with SPF include/redirect chains); `/etc/resolv.conf` "
        "bind-mounted to it. The ceilings (`bench/minimal.py`) are the least any server on this stack could do: "
        "for the policy protocol a uvloop server that only finds the blank line and answers `action=DUNNO`, for "
        "MessagePack-RPC one that only frames (msgpack `Unpacker`) and answers a fixed result, for the milter a "
        "null milter in C on libmilter (`bench/c/nullmilter.c`) over a unix socket; every row is divided by its "
        "protocol's ceiling at the same connection count. checkid's null servers are its own protocol code over "
        "an engine that answers a fixed decision (`bench/nullserver.py`). policyd-spf runs one process per "
        "connection (socat `EXEC:`), as Postfix's spawn does; pyspf-milter as its Debian unit does. The peers "
        "only check SPF (HELO, MAIL FROM); checkid runs its whole pipeline (DNSBL, registry, SPF, reputation) on "
        "the same trace. Load: compiled clients (`bench/c/`), `bench/load.py`.", "",
        peers.report(peer, peer_args), "",
        "![latency vs offered load](latency-vs-load.png)", "",
        "## Pre-fork runtime: workers and the shared cache", "",
        "`bench/runtime.py`: the policy listener of `checkid serve` with 1 and 2 workers (warm), then a cold "
        "workload asked from every connection with the shared LMDB layer off and on; upstream queries are the "
        "test DNS server's own count.", "",
        runtime.table(run, rt["connections"], rt["ids"]), "",
        "## Cold decisions", "",
        "`bench/cold.py`: the engine in-process, the test DNS server in its own process adding the RTT to "
        "every answer; each sender decided once, one at a time, so every lookup misses. The bound is the SPF "
        "chain depth + 1: one round trip for the pre-screen DNSBL (alone, so a listed spammer costs no registry "
        "query), one for the registry and the sender's SPF record together, one per further link.", "",
        cold.table(cold_data, rtt), "",
        "## SMTP front door (issue 11)", "",
        "`bench/frontdoor.py`, in a private network namespace (the client sends from 192.0.2.1): whole SMTP "
        "sessions from a compiled client (`bench/c/smtpsessions.c`) to Postfix's smtp-sink directly (the limit), "
        "through Haraka with `queue/smtp_forward` (npm `Haraka`; also with TCP_NODELAY on its backend socket, "
        "which it leaves off), and through checkid's front door (`backend_client = \"none\"`, warm ACCEPT "
        "decisions), all to the same smtp-sink. First 16 sessions at a time (throughput), then one at a time "
        "(the latency the front door adds to an unloaded session).", "",
        fd, "", fd1, "",
        "## DKIM at end of data (issue 12)", "",
        "`bench/dkim.py`, in-process on one uvloop loop: messages with a text body (prose with runs of spaces and "
        "tabs, work for relaxed canonicalization) and a base64 attachment body, signed by dkimpy, verified by "
        "checkid's `DkimVerifier` with the body as bytes and streamed in 64 KiB chunks into its body-hash sink "
        "(the front door and milter path), beside dkimpy's own `dkim.verify` (topmost signature) and "
        "`DKIM.verify(idx)` for every signature. Then the longest stall of the loop: a ticker task's 1 ms sleeps, "
        "timed while a 10 MB message is verified.", "",
        dkim.table(dkim_data), "",
        "## Metrics scrapes beside decisions (issue 14)", "",
        f"`bench/scrapes.py`: one daemon (2 workers) on the test DNS server; {scrape_args[1]:g} policy decisions/s "
        f"over {scrape_args[2]} persistent connections for {scrape_args[0]:g} s, alone, then with {scrape_args[3]} "
        "concurrent scrape loops on /metrics from another process (the endpoint keeps 64 connections, closing the "
        "oldest; it renders at most once a second; its process runs at nice 10).", "",
        "| run | decisions/s | p50 ms | p99 ms | errors | scrapes |", "|---|---|---|---|---|---|",
        scrapes.table("checkid", scrape_data), "",
        "## The fleet: HAProxy hop and Unbound hit (issue 16)", "",
        "`bench/fleet.py`: one daemon (1 worker), closed-loop policy decisions direct and through a private "
        "HAProxy on deploy/haproxy.cfg's defaults, alternating in the same run; then a warm Unbound hit on "
        "deploy/unbound.conf against the test DNS server directly.", "",
        fleet.table(fleet_data), "",
    ]
    (args.out / "RESULTS.md").write_text("\n".join(md))
    step(f"done: {args.out / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
