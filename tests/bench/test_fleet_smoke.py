"""bench/fleet.py stays runnable: the HAProxy hop and the Unbound hit, tiny, with no assertion
on speed."""
from __future__ import annotations

from bench import fleet


def test_fleet_bench_smoke_measures_both_paths_and_a_warm_unbound():
    r = fleet.measure(seconds=2.0, connections=2, rounds=1, queries=5, max_requests=50)
    for path in ("direct", "haproxy"):
        [run] = r[path]
        assert run.requests > 0 and run.errors == 0
    assert r["dns"]["upstream_queries"] == 0  # every timed query was a cache hit
    assert "| ratio through/direct |" in fleet.table(r)
