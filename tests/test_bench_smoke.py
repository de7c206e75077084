"""The benchmark suite stays runnable: everything once, tiny, with no assertion on speed."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from dns.message import make_query
from dns.query import udp

from bench import load, minimal
from bench.load import PROTOCOLS
from bench.workload import Workload
from tests.conftest import split
from testsupport.dnsserver import queries_asked
from testsupport.processes import free_port, wait_for_port, wait_until

ROOT = Path(__file__).resolve().parents[1]


def test_run_all_smoke_writes_the_report_and_the_plot(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.run_all", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    report = (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "latency-vs-load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    goals = [line for line in report.splitlines() if re.match(r"\| .* \| [≥≤] ", line)]
    assert len(goals) >= 8  # every goal of issue 6 that a smoke run measures
    goals15 = report.split("## Goals (issue 15)\n")[1].split("\n## ")[0]
    assert len([line for line in goals15.splitlines() if re.match(r"\| .* \| [≥≤] ", line)]) >= 8
    assert "nan" not in goals15  # every ratio had its reference row
    # every server of every front-end answered on each of its traces and connection counts, without an error
    minimal, null, checkid = "minimal server (the ceiling)", "checkid's null server", "checkid"
    servers = {
        "policy": {(minimal, "small"), (null, "small"), (checkid, "small"), (checkid, "border"),
                   ("policyd-spf", "small"), ("policyd-spf", "border")},
        "msgpack-rpc": {(minimal, "small"), (null, "small"), (checkid, "small"), (checkid, "border")},
        "milter": {("libmilter C null milter, unix socket (the ceiling)", "small"),
                   ("libmilter C null milter, TCP", "small"), (null, "small"), (checkid, "small"),
                   (checkid, "border"), ("checkid, unix socket", "small"), ("checkid, unix socket", "border"),
                   ("pyspf-milter", "small")}}
    for protocol, names in servers.items():
        table = report.split(f"| {protocol} server |")[1].split("\n\n")[0]
        rows = [[cell.strip() for cell in line.split("|")] for line in table.splitlines()[2:]]
        assert {(cells[1], cells[2]) for cells in rows} == names, protocol
        counts = [4] if protocol == "milter" else [4, 16]  # the smoke run's --sessions, --connection-counts
        for name in names:
            assert sorted(int(c[3]) for c in rows if (c[1], c[2]) == name) == counts, name
        assert all(int(cells[9]) == 0 and int(cells[4].replace(",", "")) > 0 for cells in rows), table
        # the ceiling's own row is 1.00× itself
        assert all(cells[10] == "1.00×" for cells in rows if "(the ceiling)" in cells[1]), table
    assert "client addresses" in report and "after one full pass" in report
    assert "Worker RSS after the run: checkid" in report
    # DKIM: every body kind, size and signature count verified, and the stall measured
    dkim = report.split("## DKIM at end of data (issue 12)\n")[1]
    assert dkim.count("\n| text | ") == dkim.count("\n| base64 | ") == 6
    assert dkim.count("\n| text: ") == dkim.count("\n| base64: ") == 3


def test_load_generator_drives_each_front_end_and_counts_upstream_queries(dns):
    for protocol in PROTOCOLS:
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "bench.nullserver", "--protocol", protocol, "--port",
                                   str(port)], cwd=ROOT)
        try:
            wait_for_port(port)
            before = dns.total
            # bounded by the count; the time is only a cap, so a slow machine still sends all 200
            out = subprocess.run([sys.executable, "-m", "bench.load", "--protocol", protocol, "--port", str(port),
                                  "--seconds", "120", "--requests", "200", "--connections", "2", "--senders", "20",
                                  "--trace", "100", "--dns", dns.address, "--json"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr
            result = json.loads(out.stdout)
            assert result["requests"] == 200 and result["errors"] == 0, result
            assert result["dns_queries"] == dns.total - before == 0  # the null server asks nothing
        finally:
            server.terminate()
            server.wait(10)


def test_the_limits_answer_every_request(tmp_path):
    requests = Workload(20, 100, seed=1).requests
    for protocol in ("policy", "msgpack-rpc"):
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "bench.minimal", "--protocol", protocol, "--port",
                                   str(port), "--workers", "2"], cwd=ROOT)
        try:
            wait_for_port(port)
            trace = load.write_trace(protocol, requests, tmp_path / f"{protocol}.bin")
            # bounded by the count; the time is only a cap
            result = load.run(protocol, port, trace, connections=3, seconds=120, max_requests=200)
            assert (result.requests, result.errors) == (200, 0), protocol
        finally:
            server.terminate()
            server.wait(10)
    trace = load.write_trace("milter", requests, tmp_path / "milter.bin")
    sock, port = tmp_path / "nullmilter.sock", free_port()
    milters = [subprocess.Popen([str(minimal.nullmilter()), address])
               for address in (f"unix:{sock}", f"inet:{port}@127.0.0.1")]
    try:
        wait_for_port(port)
        wait_until(sock.exists, "the null milter's unix socket")
        result = load.run("milter", 0, trace, connections=2, seconds=120, max_requests=50, unix=sock)
        assert (result.requests, result.errors) == (50, 0)
        # over TCP each session waits out a delayed ACK at end of message: a few suffice
        result = load.run("milter", port, trace, connections=2, seconds=120, max_requests=6)
        assert (result.requests, result.errors) == (6, 0)
    finally:
        for milter in milters:
            milter.terminate()
            milter.wait(10)


class Transport:
    def __init__(self) -> None:
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("cuts", [[], [1], [5, 6, 7], [12, 13], list(range(0, 40, 3))])
def test_the_minimal_policy_server_answers_each_request_once_however_it_is_split(cuts):
    requests = b"request=smtpd_access_policy\nsender=a@b\n\n" * 3
    server, transport = minimal.MinimalPolicy(), Transport()
    server.connection_made(transport)  # type: ignore[arg-type]
    for piece in split(requests, cuts):
        server.data_received(piece)
    assert transport.out == b"action=DUNNO\n\n" * 3 and not transport.closed


def test_the_minimal_servers_close_a_connection_that_never_ends_its_request():
    server, transport = minimal.MinimalPolicy(), Transport()
    server.connection_made(transport)  # type: ignore[arg-type]
    server.data_received(b"x" * (minimal.MAX_PENDING + 1))
    assert transport.closed and transport.out == b""


def test_the_minimal_msgpack_server_answers_under_each_requests_msgid():
    server, transport = minimal.MinimalMsgpack(msgpack.packb(minimal.fixed_result())), Transport()
    server.connection_made(transport)  # type: ignore[arg-type]
    wire = b"".join(load.msgpack_request(r, n) for n, r in enumerate(Workload(5, 4, seed=1).requests))
    for piece in split(wire, [3, 40, 41]):
        server.data_received(piece)
    answers = list(msgpack.Unpacker(io.BytesIO(transport.out)))
    assert [a[:3] for a in answers] == [[1, n, None] for n in range(4)]
    assert all(a[3] == minimal.fixed_result() for a in answers)


def test_the_dns_server_tells_its_query_count_without_counting_the_question(dns):
    for name in ("example.com", "nothing.example.com"):
        udp(make_query(name, "TXT"), "127.0.0.1", timeout=5, port=dns.port)
    assert queries_asked(dns.address) == dns.total == 2
    assert queries_asked(dns.address) == 2
