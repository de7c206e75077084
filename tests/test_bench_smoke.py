"""The benchmark suite stays runnable: everything once, tiny, with no assertion on speed."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from dns.message import make_query
from dns.query import udp

from bench.load import PROTOCOLS
from testsupport.dnsserver import queries_asked
from testsupport.processes import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


def test_run_all_smoke_writes_the_report_and_the_plot(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.run_all", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    report = (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "latency-vs-load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    goals = [line for line in report.splitlines() if re.match(r"\| .* \| [≥≤] ", line)]
    assert len(goals) >= 8  # every goal of issue 6 that a smoke run measures
    # every server of every front-end answered, without an error
    servers = {"policy": {"null", "checkid", "policyd-spf", "policyd-spf, 4 connections"}, "msgpack-rpc": {"null", "checkid"},
               "milter": {"null", "checkid", "pyspf-milter"}}
    for protocol, names in servers.items():
        table = report.split(f"| {protocol} server |")[1].split("\n\n")[0]
        rows = {line.split("|")[1].strip(): line.split("|") for line in table.splitlines()[2:]}
        assert set(rows) == names, protocol
        assert all(int(cells[7]) == 0 and int(cells[2].replace(",", "")) > 0 for cells in rows.values()), table
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


def test_the_dns_server_tells_its_query_count_without_counting_the_question(dns):
    for name in ("example.com", "nothing.example.com"):
        udp(make_query(name, "TXT"), "127.0.0.1", timeout=5, port=dns.port)
    assert queries_asked(dns.address) == dns.total == 2
    assert queries_asked(dns.address) == 2
