"""What one worker's memory cache holds when it is full: bytes per entry, by kind (issue 15).

The engine in-process, with the default configuration's memory cache (``[dns] cache_size``
entries), decides a border MTA's day (bench/border.py) against the test DNS server (its own
process, no RTT) until that cache is full, the way a worker fills it. Then:

- the process's RSS before any decision, with the cache full, and after ``malloc_trim(0)``;
- tracemalloc's count of the bytes still allocated since the first decision (the cache and
  whatever else the decisions left behind), by source line, and per cache entry;
- the entries by kind (DNSBL answer, registry TXT, SPF TXT, SPF result) and each kind's own
  size, measured by building that kind's entries alone.

    .venv/bin/python -m bench.workermem [--cache-size 100000] [--messages 200000] [--trace]

Without ``--trace`` only RSS is measured (tracemalloc doubles the time and the memory).
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import uvloop

from bench.border import BorderWorkload
from bench.cold import dns_server
from bench.workload import DNSBL, REGISTRY
from checkid.config import Config, DnsConfig, DnsList, PrescreenConfig, RegistryConfig
from checkid.engine.decision import Envelope
from checkid.engine.dns.cache import MemoryCache
from checkid.engine.engine import Engine

#: decisions in flight at once while filling (a worker's concurrent connections)
CONCURRENCY = 64


def rss_kib() -> int:
    """This process's resident set, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def malloc_trim() -> bool:
    """Give glibc's freed heap back to the kernel; False where there is no glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def kind(key: Hashable) -> str:
    """Which of the engine's cache entries ``key`` is."""
    if isinstance(key, tuple) and key and key[0] == "spf":
        return "spf result"
    assert isinstance(key, tuple)
    name, rdtype = str(key[0]), str(key[1])
    if name.endswith(DNSBL):
        return f"dnsbl {rdtype}"
    if name.endswith(REGISTRY):
        return f"registry {rdtype}"
    return f"other {rdtype}"


def fill(cache_size: int, messages: int, trace: bool, seed: int = 1) -> dict[str, Any]:
    """Decide border requests until the engine's memory cache holds ``cache_size`` entries."""
    workload = BorderWorkload(messages, 30_000, seed)
    out: dict[str, Any] = {"cache_size": cache_size}
    with tempfile.TemporaryDirectory(prefix="checkid-mem-") as tmp, \
            dns_server(workload, Path(tmp), 0.0) as address:  # type: ignore[arg-type]
        config = Config(dns=DnsConfig(nameservers=(address,), cache_size=cache_size),
                        registry=RegistryConfig(zone=REGISTRY),
                        prescreen=PrescreenConfig(dnsbl=(DnsList(zone=DNSBL),)))

        async def run() -> None:
            engine = Engine(config)
            cache = engine.cache
            assert isinstance(cache, MemoryCache)
            # one decision first: imports, the resolver, the policy are not the cache's
            first = workload.requests[0]
            await engine.decide(Envelope(ip=first.ip, helo=first.helo, sender=first.sender, rcpts=(first.rcpt,)))
            gc.collect()
            out["rss_before_kib"] = rss_kib()
            if trace:
                tracemalloc.start(1)
            requests = iter(workload.requests[1:])
            decided = 0
            start = time.process_time()

            async def client() -> None:
                nonlocal decided
                for r in requests:
                    if len(cache) >= cache_size:
                        return
                    await engine.decide(Envelope(ip=r.ip, helo=r.helo, sender=r.sender, rcpts=(r.rcpt,)))
                    decided += 1

            await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
            out["fill_cpu_s"] = time.process_time() - start
            out["decisions"] = decided
            out["entries"] = len(cache)
            gc.collect()
            out["rss_full_kib"] = rss_kib()
            if trace:
                snapshot = tracemalloc.take_snapshot()
                tracemalloc.stop()
                stats = snapshot.statistics("lineno")
                out["traced_bytes"] = sum(s.size for s in stats)
                out["top"] = [(str(s.traceback[0]), s.size, s.count) for s in stats[:15]]
            out["kinds"] = dict(Counter(kind(k) for k in cache._data))
            out["rss_trimmed_kib"] = rss_kib() if malloc_trim() else None
            out["sample"] = {k: repr(v) for k, v in _samples(cache).items()}

        uvloop.run(run())
    return out


def _samples(cache: MemoryCache) -> dict[str, tuple[Hashable, Any]]:
    seen: dict[str, tuple[Hashable, Any]] = {}
    for key, value in cache._data.items():
        seen.setdefault(kind(key), (key, value[0]))
    return seen


def report(out: dict[str, Any]) -> str:
    entries = max(1, out["entries"])
    lines = [f"memory cache: {out['entries']:,} entries (cache_size {out['cache_size']:,}) after "
             f"{out['decisions']:,} border decisions ({out['fill_cpu_s']:.1f} s CPU)",
             f"RSS: {out['rss_before_kib'] / 1024:.1f} MiB before, {out['rss_full_kib'] / 1024:.1f} MiB full "
             f"({(out['rss_full_kib'] - out['rss_before_kib']) * 1024 / entries:,.0f} bytes per entry)"
             + (f", {out['rss_trimmed_kib'] / 1024:.1f} MiB after malloc_trim(0)" if out.get("rss_trimmed_kib") else ""),
             "entries by kind: " + ", ".join(f"{k} {n:,}" for k, n in sorted(out["kinds"].items()))]
    if "traced_bytes" in out:
        lines.append(f"tracemalloc: {out['traced_bytes'] / 2**20:.1f} MiB still allocated since the first decision "
                     f"({out['traced_bytes'] / entries:,.0f} bytes per entry); top lines:")
        lines += [f"  {size / 2**20:7.2f} MiB {count:>9,} blocks  {where}" for where, size, count in out["top"]]
    lines += [f"  sample {k}: {v}" for k, v in out["sample"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-size", type=int, default=DnsConfig().cache_size)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--trace", action="store_true", help="also count allocations with tracemalloc")
    args = parser.parse_args()
    print(report(fill(args.cache_size, args.messages, args.trace)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
