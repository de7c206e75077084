"""The cost of one ``checkid-spp`` invocation, exec to exit, as qmail-spp pays it per command.

Runs the plugin against a real ``checkid serve`` (unix socket, warm cache) and, in the same
run, ``/bin/true`` (the floor: a bare fork+exec+wait) and the plugin with no engine listening
(its own start-up and a refused connect). Prints median and p99 per invocation.

Usage: .venv/bin/python -m bench.spp [--runs N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

from testsupport.dnsserver import TestDnsServer
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".bench-build"
ZONES = ROOT / "testsupport" / "zones"


def plugin() -> Path:
    """checkid-spp built as scripts/install builds it, under .bench-build/."""
    source = ROOT / "spp" / "checkid-spp.c"
    binary = BUILD / "checkid-spp-mail"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(source)], check=True)
    return binary


def invocations(program: str, env: dict[str, str], runs: int) -> list[float]:
    """Seconds from spawn to reaped exit, per run; stdin closed as spp does, output to /dev/null."""
    times = []
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for _ in range(runs):
            start = time.perf_counter()
            pid = os.posix_spawn(program, [program], env,
                                 file_actions=[(os.POSIX_SPAWN_CLOSE, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                                               (os.POSIX_SPAWN_DUP2, devnull, 2)])
            os.waitpid(pid, 0)
            times.append(time.perf_counter() - start)
    finally:
        os.close(devnull)
    return times


def summary(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{name:32} median {statistics.median(times) * 1e3:7.3f} ms   p99 {p99 * 1e3:7.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    binary = str(plugin())
    with TestDnsServer(ZONES) as dns:
        workdir = world_readable_tmpdir("checkid-spp-bench-")
        sock, port = workdir / "rpc.sock", free_port()
        toml = (f'[[listen]]\nprotocol = "msgpack-rpc"\naddress = "unix:{sock}"\n'
                f'[[listen]]\nprotocol = "msgpack-rpc"\naddress = "127.0.0.1:{port}"\n'
                f'[dns]\nnameservers = ["{dns.address}"]\n[registry]\nzone = "registry.test"\n')
        with Checkid(toml, workdir, [port]):
            env = {"TCPREMOTEIP": "192.0.2.1", "SMTPHELOHOST": "example.com", "SMTPMAILFROM": "a@example.com",
                   "CHECKID_SPP_SERVER": f"unix:{sock}"}
            invocations(binary, env, 50)  # warm the engine's cache and the page cache
            floor = invocations("/bin/true", env, args.runs)
            warm = invocations(binary, env, args.runs)
            down = invocations(binary, {**env, "CHECKID_SPP_SERVER": "unix:/nonexistent.sock"}, args.runs)
    print(summary("/bin/true (fork+exec floor)", floor))
    print(summary("checkid-spp, warm decision", warm))
    print(summary("checkid-spp, engine down", down))
    print(f"warm decision costs {statistics.median(warm) / statistics.median(floor):.1f}x a bare exec")


if __name__ == "__main__":
    main()
