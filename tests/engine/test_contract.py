"""The public contract: the seed's two results, in-process and through ``checkid query``."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import checkid
from checkid.errors import CheckidError
from tests.conftest import base_config, run

SEED_REJECT = ("REJECT", (550, "5.7.1", "Sending MTA '192.0.2.1' not authorized by 'example.net'"), [])
SEED_ACCEPT = ("ACCEPT", (250, "", "Sender OK"),
               [{"label": "Authent:", "text": "192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"}])


def test_checkid_seed_results_hold(dns):
    checkid.configure(base_config(dns))
    assert checkid.checkID("192.0.2.1", "example.net") == SEED_REJECT
    assert checkid.checkID("192.0.2.1", "example.com") == SEED_ACCEPT


def test_checkid_keyword_arguments_and_defaults(dns):
    checkid.configure(base_config(dns))
    assert checkid.checkID(IP="192.0.2.1", ID="example.com", H="mail.example.com",
                           S="bob@example.com", R=["a@example.org"], Hdrs=["Subject: x"], Body="hi") == SEED_ACCEPT


def test_checkid_refuses_to_block_a_running_loop(dns):
    checkid.configure(base_config(dns))

    async def inside():
        checkid.checkID("192.0.2.1", "example.com")

    with pytest.raises(CheckidError, match="await"):
        run(inside())


def _query(dns, *args):
    return subprocess.run(
        [sys.executable, "-m", "checkid", "query", *args, "--nameserver", dns.address,
         "--registry-zone", "registry.test"],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("ident, expected", [("example.net", SEED_REJECT), ("example.com", SEED_ACCEPT)])
def test_cli_query_json_gives_the_seed_results(dns, ident, expected):
    out = _query(dns, "192.0.2.1", ident, "--json")
    assert out.returncode == {"ACCEPT": 0, "REJECT": 1}[expected[0]], out.stderr  # the documented exit codes
    action, reply, headers = expected
    assert json.loads(out.stdout) == {"action": action, "reply": list(reply), "headers": headers}


def test_cli_query_trace_shows_stages_and_cache(dns):
    out = _query(dns, "192.0.2.1", "example.com", "--trace")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    stages = [line.split()[0] for line in lines]
    assert stages.index("prescreen") < stages.index("registry") < stages.index("methods")
    assert any("example.com.registry.test TXT" in line and "[query]" in line for line in lines)
    # the SPF record was asked with the registry's (one round trip): a query, not a cache hit
    assert any(line.startswith("dns") and "example.com TXT: \"v=spf1" in line and "[query, prefetched]" in line
               for line in lines)
    assert not any("[cache]" in line for line in lines)  # a fresh process has nothing cached
    assert lines[-2:] == ["ACCEPT 250 Sender OK",
                          "Authent: 192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"]


def test_cli_reports_a_bad_config_file_and_exits_nonzero(tmp_path):
    bad = tmp_path / "checkid.toml"
    bad.write_text('[dns]\ntimeout = "soon"\n')
    out = subprocess.run([sys.executable, "-m", "checkid", "check-config", "-c", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "dns.timeout" in out.stderr and "expected a number" in out.stderr
