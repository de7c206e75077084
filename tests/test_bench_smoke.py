"""The benchmarks stay runnable: each one once, tiny, with no assertion on speed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_micro_benchmarks_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider",
                          "--benchmark-disable"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_runtime_benchmark_runs():
    out = subprocess.run([sys.executable, "-m", "bench.runtime", "--seconds", "1", "--ids", "40",
                          "--connections", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| warm") or line.startswith("| upstream")]
    assert len(rows) == 4 and all("0 errors" in r for r in rows[:2])


def test_milter_benchmark_runs():
    out = subprocess.run([sys.executable, "-m", "bench.milter", "--seconds", "1", "--connections", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| null") or line.startswith("| checkid")]
    assert len(rows) == 3 and all("| 0 |" in r for r in rows)


def test_peer_benchmark_runs():
    out = subprocess.run([sys.executable, "-m", "bench.peers", "--seconds", "1", "--warm", "1", "--senders", "50",
                          "--requests", "500"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    peers = {"checkid", "policyd-spf", "null", "checkid milter", "pyspf-milter", "null milter"}
    assert peers <= set(rows)
    assert all(rows[name].split("|")[6].strip() == "0" for name in peers)
