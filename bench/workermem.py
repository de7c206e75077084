"""What one worker's memory cache holds when it is full: bytes per entry, by kind (issue 15).

The engine in-process, with the default configuration's memory cache (``[dns] cache_size``
entries), decides a border MTA's day (bench/border.py) against the test DNS server (its own
process, no RTT) until that cache is full, the way a worker fills it. Then:

- a worker's own baseline, measured apart: a fresh process that imports what a worker imports
  (every front-end, the metrics) and builds the engine, its RssAnon (the process's own pages)
  and RssFile (shared library and module text, shared with every other worker);
- the filling process's RSS before any decision, with the cache full, and after
  ``malloc_trim(0)``; the difference is what the full cache (and the engine's other bounded
  tables: the decision memo, the parsing caches) adds to a worker, and the projected worker
  RSS is the baseline plus it (the filling process also holds the trace, which no worker does);
- with ``--trace``, what each bounded table holds, as the traced bytes its clearing frees: the
  decision memo (``MEMO_SIZE``), the parsing caches (``validate.parse_ip``,
  ``validate.domain``, ``prescreen.reverse_name``, the registry's parsed records), the
  memory cache;
- tracemalloc's count of the bytes still allocated since the first decision (the cache and
  whatever else the decisions left behind), by source line, and per cache entry;
- the entries by kind (DNSBL answer, registry TXT, SPF TXT, SPF result) and each kind's own
  size, measured by building that kind's entries alone.

    .venv/bin/python -m bench.workermem [--cache-size 100000] [--messages 200000] [--trace]

Without ``--trace`` only RSS is measured (tracemalloc doubles the time and the memory).

``--structures N`` instead measures, in seconds and without DNS, what one entry of each
candidate cache structure costs (tracemalloc bytes per entry): N entries in the border fill's
mix of kinds (:data:`MIX`), every key and value a fresh object as the DNS client makes it,
stored by cachetools' ``LRUCache`` (the cache before issue 15), by :class:`MemoryCache`
without sharing values, and by :class:`MemoryCache`.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import subprocess
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
from checkid.engine import validate
from checkid.engine.checks import prescreen, registry
from checkid.engine.dns.cache import MemoryCache
from checkid.engine.engine import Engine

#: decisions in flight at once while filling (a worker's concurrent connections)
CONCURRENCY = 64


def rss_kib(field: str = "VmRSS") -> int:
    """This process's resident set (``VmRSS``, ``RssAnon``, ``RssFile``), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


#: a worker's imports and engine, without cache entries, in a process of its own
BASELINE = """
import gc, json
from pathlib import Path
import checkid.runtime.worker, checkid.runtime.metrics
from checkid.config import Config
from checkid.engine.engine import Engine
from checkid.protocols.registry import PROTOCOLS
import importlib
for target in PROTOCOLS.values():
    importlib.import_module(target.partition(":")[0])
engine = Engine(Config())
gc.collect()
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
print(json.dumps({k: int(status[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")}))
"""


def worker_baseline() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile (KiB) of a fresh process holding a worker's code and engine."""
    out = subprocess.run([sys.executable, "-c", BASELINE], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def _clear_parsing_caches() -> None:
    validate.parse_ip.cache_clear()
    validate.domain.cache_clear()
    prescreen.reverse_name.cache_clear()
    registry._parsed.clear()


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


#: the full cache's entries by kind on the border trace (the default 100,000-entry fill: DNSBL
#: answers 49 %, SPF records 19 %, SPF results 19 %, registry records 12 %), and each kind's values:
#: DNSBL answers are NXDOMAIN or a listing, registry answers NXDOMAIN (unregistered) or the
#: record, SPF records are each domain's own, SPF results a handful of outcomes
MIX = (("dnsbl A", 0.49), ("other TXT", 0.19), ("spf result", 0.19), ("registry TXT", 0.12))


def border_entry(kind_: str, i: int) -> tuple[Hashable, Any]:
    """The ``i``-th entry of kind ``kind_`` (a :data:`MIX` name): its key and a fresh value."""
    from checkid.engine.checks.spfcheck import Result, SpfOutcome
    from checkid.engine.dns.client import DnsAnswer, Outcome

    ttl = int("3600")  # a fresh int, as the client's clamp makes one
    ip = f"{i & 255}.{i >> 8 & 255}.{100 + (i >> 16)}.100"
    if kind_ == "dnsbl A":
        listed = i % 5 < 2
        return ((".".join(reversed(ip.split("."))) + "." + DNSBL).lower().rstrip("."), "A"), \
            DnsAnswer(Outcome.ANSWER, ("127.0.0." + "2",), ttl) if listed else DnsAnswer(Outcome.NXDOMAIN, (), ttl)
    domain = f"d{i}.senders.bench.test"
    if kind_ == "other TXT":
        return (domain.lower(), "TXT"), DnsAnswer(Outcome.ANSWER, ((f"v=spf1 ip4:{ip}/28 ~all".encode(),),), ttl)
    if kind_ == "registry TXT":
        if i % 3 == 0:
            return ((domain + "." + REGISTRY).lower(), "TXT"), DnsAnswer(Outcome.NXDOMAIN, (), ttl)
        return ((domain + "." + REGISTRY).lower(), "TXT"), \
            DnsAnswer(Outcome.ANSWER, (("mth=SPF1+2 svc=S1:A,M2:A,H1:B".encode(),),), ttl)
    result = (Result.PASS, Result.FAIL, Result.SOFTFAIL)[i % 3]
    return ("spf", ip.lower(), domain.lower()), SpfOutcome(result, "sender SPF " + result.value.lower(), "")


def structures(n: int) -> dict[str, float]:
    """Traced bytes per entry of each candidate structure, holding ``n`` border-mix entries."""
    import cachetools

    kinds = [k for k, share in MIX for _ in range(round(share * 100))]
    out: dict[str, float] = {}

    def cachetools_lru() -> Any:
        lru: cachetools.LRUCache[Hashable, tuple[Any, float]] = cachetools.LRUCache(n)

        class Put:
            def put(self, key: Hashable, value: Any, expires: float) -> None:
                lru[key] = (value, expires)
        Put.lru = lru  # type: ignore[attr-defined]
        return Put()

    for label, make in (("cachetools LRUCache", cachetools_lru),
                        ("MemoryCache, values not shared", lambda: MemoryCache(n, shared_values=0)),
                        ("MemoryCache", lambda: MemoryCache(n))):
        gc.collect()
        tracemalloc.start()
        cache = make()
        for i in range(n):
            key, value = border_entry(kinds[i % len(kinds)], i)
            cache.put(key, value, time.monotonic() + float(i % 3600))
        out[label] = tracemalloc.get_traced_memory()[0] / n
        tracemalloc.stop()
        del cache
    return out


def fill(cache_size: int, messages: int, trace: bool, seed: int = 1) -> dict[str, Any]:
    """Decide border requests until the engine's memory cache holds ``cache_size`` entries."""
    workload = BorderWorkload(messages, 30_000, seed)
    out: dict[str, Any] = {"cache_size": cache_size, "baseline": worker_baseline()}
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
            out["anon_before_kib"] = rss_kib("RssAnon")
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
            out["anon_full_kib"] = rss_kib("RssAnon")
            memo = engine._memo
            out["memo_entries"] = len(memo) if memo is not None else 0
            out["kinds"] = dict(Counter(kind(k) for k in cache.keys()))
            out["sample"] = {k: repr(v) for k, v in _samples(cache).items()}
            if trace:
                snapshot = tracemalloc.take_snapshot()
                stats = snapshot.statistics("lineno")
                out["traced_bytes"] = sum(s.size for s in stats)
                out["top"] = [(str(s.traceback[0]), s.size, s.count) for s in stats[:15]]
                del snapshot, stats
                gc.collect()
                held: dict[str, int] = {}
                for table, clear in (("decision memo", memo.clear if memo is not None else lambda: None),
                                     ("parsing caches", _clear_parsing_caches),
                                     ("memory cache", cache.flush)):
                    before = tracemalloc.get_traced_memory()[0]
                    clear()
                    gc.collect()
                    held[table] = before - tracemalloc.get_traced_memory()[0]
                out["held"] = held
                tracemalloc.stop()
            out["rss_trimmed_kib"] = rss_kib() if malloc_trim() else None

        uvloop.run(run())
    return out


def _samples(cache: MemoryCache) -> dict[str, tuple[Hashable, Any]]:
    seen: dict[str, tuple[Hashable, Any]] = {}
    for key in cache.keys():
        if kind(key) not in seen:
            seen[kind(key)] = (key, cache._data[key][0])
    return seen


def report(out: dict[str, Any]) -> str:
    entries = max(1, out["entries"])
    base = out["baseline"]
    grown = out["rss_full_kib"] - out["rss_before_kib"]
    lines = [f"memory cache: {out['entries']:,} entries (cache_size {out['cache_size']:,}) after "
             f"{out['decisions']:,} border decisions ({out['fill_cpu_s']:.1f} s CPU); decision memo "
             f"{out['memo_entries']:,} entries",
             f"worker baseline (own process): RSS {base['VmRSS'] / 1024:.1f} MiB = RssAnon {base['RssAnon'] / 1024:.1f}"
             f" + RssFile {base['RssFile'] / 1024:.1f} (+ shmem)",
             f"filling process RSS: {out['rss_before_kib'] / 1024:.1f} MiB before, {out['rss_full_kib'] / 1024:.1f} MiB "
             f"full: +{grown / 1024:.1f} MiB ({grown * 1024 / entries:,.0f} bytes per cache entry, all tables "
             f"included; RssAnon +{(out['anon_full_kib'] - out['anon_before_kib']) / 1024:.1f} MiB)"
             + (f", {out['rss_trimmed_kib'] / 1024:.1f} MiB after malloc_trim(0)" if out.get("rss_trimmed_kib") else ""),
             f"projected worker with the cache full: RSS {(base['VmRSS'] + grown) / 1024:.1f} MiB, "
             f"RssAnon {(base['RssAnon'] + grown) / 1024:.1f} MiB",
             "entries by kind: " + ", ".join(f"{k} {n:,}" for k, n in sorted(out["kinds"].items()))]
    if "traced_bytes" in out:
        lines.append(f"tracemalloc: {out['traced_bytes'] / 2**20:.1f} MiB still allocated since the first decision "
                     f"({out['traced_bytes'] / entries:,.0f} bytes per entry); held by each table "
                     + ", ".join(f"{t} {b / 2**20:.1f} MiB" for t, b in out["held"].items())
                     + f" ({out['held']['memory cache'] / entries:,.0f} bytes per cache entry); top lines:")
        lines += [f"  {size / 2**20:7.2f} MiB {count:>9,} blocks  {where}" for where, size, count in out["top"]]
    lines += [f"  sample {k}: {v}" for k, v in out["sample"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-size", type=int, default=DnsConfig().cache_size)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--trace", action="store_true", help="also count allocations with tracemalloc")
    parser.add_argument("--structures", type=int, metavar="N",
                        help="only compare the cache structures' bytes per entry, holding N entries")
    args = parser.parse_args()
    if args.structures:
        for label, size in structures(args.structures).items():
            print(f"{label:>32}: {size:,.0f} bytes per entry")
        return
    print(report(fill(args.cache_size, args.messages, args.trace)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
