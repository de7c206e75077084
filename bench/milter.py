"""Whole milter sessions (negotiate … end of message … quit) through the real socket, as an
MTA plays them: checkid (warm cache) beside a null milter on the same Protocol code path that
answers a fixed decision without deciding. Loopback only, bounded in time.

    .venv/bin/python -m bench.milter [--seconds 10] [--connections 4]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time

from checkid.protocols.milter import codec
from checkid.protocols.milter.events import (ACCEPT, Body, Connect, Data, EndOfHeaders, EndOfMessage, Header, Helo,
                                             Mail, OptNeg, Quit, Rcpt)
from tests.dnsserver import TestDnsServer
from tests.processes import Checkid, free_port, world_readable_tmpdir, wait_for_port
from bench.runtime import ZONES

#: the commands of one session; the replies expected: OPTNEG, MAIL, RCPT, INSHEADER + verdict
SESSION = [
    [OptNeg(6, 0x1FF, 0x1FFFFF)],
    [Connect("mail.example.com", "4", 25, "192.0.2.1"), Helo("example.com"), Mail(("<alice@example.com>",))],
    [Rcpt(("<bob@example.org>",))],
    [Data(), Header("From", "alice@example.com"), Header("To", "bob@example.org"), Header("Subject", "bench"),
     EndOfHeaders(), Body(b"hello\r\n" * 20), EndOfMessage()],
]
REPLIES = [1, 1, 1, 2]
WIRE = [b"".join(codec.encode_command(c) for c in step) for step in SESSION]
QUIT = codec.encode_command(Quit())


def one_session(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        parser = codec.ResponseParser()
        last = None
        for wire, want in zip(WIRE, REPLIES):
            s.sendall(wire)
            got = 0
            while got < want:
                event = parser.next_event()
                if event is None:
                    data = s.recv(65536)
                    if not data:
                        return False
                    parser.receive_data(data)
                    continue
                got += 1
                last = event
        s.sendall(QUIT)
    return last == ACCEPT


def _client(port: int, seconds: float, start: float, out: "multiprocessing.Queue[tuple[int, int, list[float]]]") -> None:
    while time.time() < start:
        time.sleep(0.001)
    end = time.perf_counter() + seconds
    done = errors = 0
    latencies = []
    while time.perf_counter() < end:
        t = time.perf_counter()
        try:
            ok = one_session(port)
        except OSError:
            ok = False
        if ok:
            done += 1
            latencies.append(time.perf_counter() - t)
        else:
            errors += 1
    out.put((done, errors, latencies))


def load(port: int, connections: int, seconds: float) -> tuple[float, float, int]:
    """(sessions/s, median session seconds, errors)"""
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[tuple[int, int, list[float]]] = ctx.Queue()
    start = time.time() + 0.3
    procs = [ctx.Process(target=_client, args=(port, seconds, start, out)) for _ in range(connections)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(30)
    lat = [x for r in results for x in r[2]]
    return sum(r[0] for r in results) / seconds, statistics.median(lat) if lat else float("nan"), sum(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description="milter sessions/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    rows = []
    port = free_port()
    null = subprocess.Popen([sys.executable, "-m", "bench.nullserver", "--protocol", "milter", "--port", str(port)])
    try:
        wait_for_port(port)
        assert one_session(port)
        reference = load(port, args.connections, args.seconds)
    finally:
        null.terminate()
        null.wait(10)
    rows.append(("null milter (1 process, fixed decision)", reference))
    with TestDnsServer(ZONES) as dns:
        for workers in (1, 2):
            mport = free_port()
            toml = (f'[[listen]]\nprotocol = "milter"\naddress = "127.0.0.1:{mport}"\n[server]\nworkers = {workers}\n'
                    f'log_level = "warning"\nstate_dir = "{world_readable_tmpdir("checkid-bench-")}/state"\n'
                    f'[dns]\nnameservers = ["{dns.address}"]\n[registry]\nzone = "registry.test"\n')
            with Checkid(toml, world_readable_tmpdir("checkid-bench-"), [mport]):
                assert one_session(mport)  # warms the cache
                rows.append((f"checkid, {workers} worker{'s' if workers > 1 else ''}",
                             load(mport, args.connections, args.seconds)))
    print(f"Machine: {os.cpu_count()} cores shared by the load client and the milter; "
          f"{args.connections} client processes, one session at a time each, new connection per session")
    print()
    print("| milter | sessions/s | median session | errors | ratio to the null milter |")
    print("|---|---:|---:|---:|---:|")
    for name, (rate, median, errors) in rows:
        print(f"| {name} | {rate:,.0f} | {median * 1e3:.2f} ms | {errors} | {rate / reference[0]:.2f}× |")


if __name__ == "__main__":
    main()
