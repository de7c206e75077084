"""What ``checkid stats`` and ``checkid cache`` read and do, from outside the daemon.

Nothing here asks a worker: the counters are the Prometheus multiprocess files every worker
writes (summed as ``/metrics`` sums them, retired workers included), the workers, uptime
and policy state are the master's state file, and the shared cache is the LMDB file
itself. So the numbers cover every worker, whichever one a connection would reach.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from checkid.config import Config
from checkid.engine.dns.cache import mentions
from checkid.errors import CheckidError
from checkid.runtime import control
from checkid.runtime.process import state_dir


def _master(config: Config) -> tuple[Path, dict[str, Any] | None, str]:
    directory = Path(state_dir(config))
    try:
        _, state = control.running_master(directory)
    except control.NotRunning as e:
        return directory, None, str(e)
    return directory, state, ""


def read_counters(metrics_dir: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every ``checkid_*_total`` counter summed over the processes: name (without the
    prefix and suffix) -> [(labels, value)]."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if not Path(metrics_dir).is_dir():
        return {}
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in registry.collect():
        if family.type != "counter" or not family.name.startswith("checkid_"):
            continue
        name = family.name.removeprefix("checkid_")
        samples = [(dict(s.labels), s.value) for s in family.samples if s.name.endswith("_total")]
        if samples:
            out[name] = sorted(samples, key=lambda s: sorted(s[0].items()))
    return out


def _open_shared(config: Config, state: dict[str, Any] | None, directory: Path) -> Any | None:
    from checkid.runtime.lmdbcache import LmdbCache

    path = state["cache"] if state is not None else (str(directory / "cache") if config.cache.shared else "")
    if not path or not Path(path, "data.mdb").exists():
        return None
    try:
        return LmdbCache(path, config.cache.size_mb)
    except Exception as e:
        raise CheckidError(f"shared cache {path}: {e}") from None


def collect(config: Config) -> dict[str, Any]:
    """Everything ``checkid stats`` shows, as JSON-ready data."""
    directory, state, why = _master(config)
    metrics_dir = state["metrics_dir"] if state else (config.metrics.dir or str(directory / "metrics"))
    counters = read_counters(metrics_dir)
    out: dict[str, Any] = {"running": state is not None}
    if state is None:
        out["note"] = why
    else:
        workers = [w for w in state["workers"] if not w["retiring"]]
        out.update(
            pid=state["pid"], version=state["version"], uptime=round(time.time() - state["started"], 1),
            config=state["config"], generation=state["generation"], ready=state["ready"],
            draining=state.get("draining", False),
            workers={"running": len(workers), "wanted": state["workers_wanted"],
                     "serving": sum(1 for w in workers if w["serving"])},
            policy=state["policy"], last_reload=state["reloads"][-1] if state["reloads"] else None,
        )
    out["cache"] = cache_stats(config, state, directory, counters)
    out["counters"] = {name: [{"labels": labels, "value": value} for labels, value in samples]
                       for name, samples in counters.items()}
    return out


def cache_stats(config: Config, state: dict[str, Any] | None, directory: Path,
                counters: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
    """Entries and hit rates per layer. l1 hits / all lookups; l2 hits / the lookups l1 missed."""
    by: dict[tuple[str, str], float] = {}
    for labels, value in counters.get("cache_lookups", []):
        key = (labels.get("layer", ""), "miss" if labels.get("result") == "miss" else "hit")
        by[key] = by.get(key, 0) + value
    l1, l2, miss = by.get(("l1", "hit"), 0), by.get(("l2", "hit"), 0), by.get(("all", "miss"), 0)
    lookups = l1 + l2 + miss
    out: dict[str, Any] = {
        "lookups": int(lookups),
        "l1": {"hits": int(l1), "hit_rate": round(l1 / lookups, 4) if lookups else None,
               "entries": sum(w["entries"] for w in state["workers"]) if state else None},
    }
    shared = _open_shared(config, state, directory)
    if shared is not None:
        try:
            used, size = shared.usage()
            out["l2"] = {"hits": int(l2), "hit_rate": round(l2 / (l2 + miss), 4) if l2 + miss else None,
                         "entries": len(shared), "bytes_used": used, "bytes_max": size, "path": shared.path}
        finally:
            shared.close()
    return out


def render(stats: dict[str, Any]) -> str:
    """``checkid stats`` for a reader."""
    lines = []
    if stats["running"]:
        w = stats["workers"]
        policy = stats["policy"]
        lines += [f"master       pid {stats['pid']}, checkid {stats['version']}, up {_duration(stats['uptime'])}",
                  f"config       {stats['config'] or '(embedded defaults)'}",
                  f"workers      {w['serving']} serving of {w['wanted']} (generation {stats['generation']})"
                  + (", DRAINING: /healthz answers 503" if stats.get("draining") else ""),
                  f"policy       {policy['path']}: "
                  + (f"REFUSED on disk, the last good one serves: {policy['error']}" if policy["refused"] else "ok")]
        if stats["last_reload"]:
            r = stats["last_reload"]
            lines.append(f"last reload  {r['result']}{': ' + r['reason'] if r['reason'] else ''}")
    else:
        lines.append(f"master       not running ({stats['note']}); counters of the last run")
    cache = stats["cache"]
    for layer in ("l1", "l2"):
        if layer in cache:
            c = cache[layer]
            rate = "-" if c["hit_rate"] is None else f"{100 * c['hit_rate']:.1f}%"
            entries = "-" if c["entries"] is None else c["entries"]
            lines.append(f"cache {layer}     {entries} entries, {c['hits']} hits, hit rate {rate}")
    lines.append(f"cache        {cache['lookups']} lookups")
    for name, samples in stats["counters"].items():
        for sample in samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample["labels"].items()))
            lines.append(f"{name}{'{' + labels + '}' if labels else ''} {sample['value']:g}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d {s % 86400 // 3600}h {s % 3600 // 60}m {s % 60}s" if s >= 86400 else \
        f"{s // 3600}h {s % 3600 // 60}m {s % 60}s" if s >= 3600 else f"{s // 60}m {s % 60}s"


def cache_show(config: Config, name: str) -> list[dict[str, Any]]:
    """What the shared layer holds about ``name``: key, answer, seconds left."""
    directory, state, _ = _master(config)
    shared = _open_shared(config, state, directory)
    if shared is None:
        raise CheckidError("no shared cache ([cache] shared = false, or nothing cached yet); each worker's "
                           "memory layer is its own")
    try:
        found = shared.items(lambda key: mentions(key, name))
    finally:
        shared.close()
    return [{"key": list(key) if isinstance(key, tuple) else key, "answer": _describe(value),
             "ttl_left": round(left, 1), "layer": "l2"} for key, value, left in sorted(found, key=repr)]


def _describe(value: Any) -> str:
    describe = getattr(value, "describe", None)
    if callable(describe):
        return str(describe())
    result = getattr(value, "result", None)
    if result is not None:  # an SPF outcome
        return f"{getattr(result, 'name', result)} ({getattr(value, 'explanation', '')})"
    return repr(value)


def cache_flush(config: Config, name: str | None, timeout: float,
                clock: Callable[[], float] = time.monotonic, pause: Callable[[float], None] = time.sleep
                ) -> dict[str, Any]:
    """Drop ``name`` (None: everything) from the shared layer and from every worker's memory
    layer; returns what went and whether every worker confirmed within ``timeout``."""
    directory, state, why = _master(config)
    shared = _open_shared(config, state, directory)
    removed = 0
    if shared is not None:
        try:
            if name is None:
                removed = len(shared)
                shared.flush()
            else:
                removed = shared.drop_where(lambda key: mentions(key, name))
        finally:
            shared.close()
    number = control.request_flush(directory, name)
    out: dict[str, Any] = {"name": name, "shared_removed": removed, "request": number}
    if state is None:
        out.update(workers_confirmed=None, note=why)
        return out
    deadline = clock() + timeout
    while True:
        current = control.read_json(directory / control.STATE_FILE)
        if isinstance(current, dict):
            workers = [w for w in current.get("workers", []) if not w.get("retiring")]
            if workers and all(w["flushed"] >= number for w in workers):
                out["workers_confirmed"] = len(workers)
                return out
        if clock() >= deadline:
            raise CheckidError(f"the shared layer is flushed, but not every worker confirmed flushing its memory "
                               f"layer within {timeout:g} s (request {number})")
        pause(0.05)
