"""Where a worker's time goes under warm load: py-spy's samples of one ``checkid serve`` worker.

One worker (so every sample is the loaded one) serves a warm trace through the policy
protocol or the milter (a compiled client, bench/load.py) while ``py-spy record`` samples it
(``--format raw``: one line per distinct stack with its count). Printed: the functions with the
most samples at the top of the stack (own time) and on the stack at all (inclusive), as shares
of all samples. These are the "py-spy top entries" behind issue 15's missed goals.

    .venv/bin/python -m bench.profile [--protocol policy|milter] [--seconds 20] [--top 25]

Needs py-spy (``.venv/bin/pip install py-spy``) and root or ptrace rights over the worker.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench import load
from bench.runtime import bench_zones, trace
from bench.workload import Request
from testsupport.dnsserver import TestDnsServer
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

#: "function (path/to/file.py:line)": the line number is dropped so a function is one entry
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame(raw: str) -> str:
    m = FRAME.match(raw.strip())
    if not m:
        return raw.strip()
    file = m["file"]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    else:
        file = file.rsplit("/checkid/", 1)[-1] if "/checkid/" in file else Path(file).name
    return f"{m['func']} ({file})"


def aggregate(raw: str) -> tuple[int, Counter[str], Counter[str]]:
    """py-spy's raw (collapsed) output -> (samples, own samples by function, inclusive samples)."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    return total, own, inclusive


def daemon(server: TestDnsServer, protocol: str, workdir: Path) -> tuple[Checkid, int, Path | None]:
    port = free_port()
    sock = workdir / "milter.sock"
    listen = (f'[[listen]]\nprotocol = "policy"\naddress = "127.0.0.1:{port}"\n' if protocol == "policy" else
              f'[[listen]]\nprotocol = "milter"\naddress = "unix:{sock}"\nmode = "0666"\n')
    toml = f"""{listen}
[server]
workers = 1
state_dir = "{workdir / 'state'}"
log_level = "warning"
[dns]
nameservers = ["{server.address}"]
[registry]
zone = "benchreg.test"
"""
    # the milter listens on a unix socket: the metrics port says the daemon is up
    checkid = Checkid(toml, workdir, [port])
    if protocol == "milter":
        checkid.ports = [checkid.metrics_port]
    return checkid, port, (sock if protocol == "milter" else None)


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    for pid in children:
        if Path(f"/proc/{pid}/comm").read_text().startswith("checkid-w"):
            return int(pid)
    raise RuntimeError(f"no worker under master {master}: children {children}")


def profile(protocol: str, seconds: float, rate: int = 250) -> str:
    """py-spy's raw output for one worker serving ``protocol`` warm for ``seconds``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    tmp = world_readable_tmpdir("checkid-profile-trace-")
    with TestDnsServer(bench_zones(200)) as server:
        if protocol == "policy":
            path = trace(200, tmp / "warm.bin")
        else:
            path = load.write_trace("milter", (Request("pass", "192.0.2.1", f"id{i}.bench.test",
                                                       f"bounce-{i}@id{i}.bench.test", "user@example.org",
                                                       message=i) for i in range(200)), tmp / "warm.bin")
        checkid, port, unix = daemon(server, protocol, tmp)
        with checkid:
            deadline = time.monotonic() + 30
            while unix is not None and not unix.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            load.run(protocol, port, path, 16 if protocol == "policy" else 4, 60, max_requests=2000, unix=unix)
            assert checkid.proc is not None
            pid = worker_pid(checkid.proc.pid)
            out = tmp / "raw.txt"
            loader = threading.Thread(target=load.run, args=(protocol, port, path,
                                                             16 if protocol == "policy" else 4, seconds + 4),
                                      kwargs={"unix": unix}, daemon=True)
            loader.start()
            time.sleep(1.0)  # measuring a steady load, not waiting for a condition
            subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
                            "--format", "raw", "--output", str(out), "--nonblocking"],
                           check=True, capture_output=True, timeout=seconds + 60)
            loader.join(timeout=seconds + 130)
            raw = out.read_text()
    shutil.rmtree(tmp, ignore_errors=True)
    return raw


def table(raw: str, top: int) -> str:
    total, own, inclusive = aggregate(raw)
    lines = [f"{total} samples", "", "| own | function |", "|---:|---|"]
    lines += [f"| {n / total * 100:.1f} % | `{f}` |" for f, n in own.most_common(top)]
    lines += ["", "| inclusive | function |", "|---:|---|"]
    lines += [f"| {n / total * 100:.1f} % | `{f}` |" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("policy", "milter"), default="policy")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("note: py-spy needs ptrace rights over the worker (root, or ptrace_scope 0)", file=sys.stderr)
    print(table(profile(args.protocol, args.seconds), args.top))


if __name__ == "__main__":
    main()
