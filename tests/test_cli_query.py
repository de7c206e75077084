"""``checkid query``'s exit status names the action (0 ACCEPT, 1 REJECT, 3 TEMPFAIL, ...)."""
from __future__ import annotations

import subprocess
import sys

from checkid.cli import QUERY_EXIT


def query(dns, *args):
    return subprocess.run([sys.executable, "-m", "checkid", "query", *args, "--nameserver", dns.address,
                           "--registry-zone", "registry.test"], capture_output=True, text=True, timeout=60)


def test_cli_query_exit_status_per_action(dns):
    assert QUERY_EXIT == {"ACCEPT": 0, "REJECT": 1, "TEMPFAIL": 3, "FILTER": 4, "DISCARD": 5, "CONTINUE": 6}
    accept, reject = query(dns, "192.0.2.1", "example.com"), query(dns, "192.0.2.1", "example.net")
    assert (accept.returncode, accept.stdout.split()[0]) == (0, "ACCEPT")
    assert (reject.returncode, reject.stdout.split()[0]) == (1, "REJECT")
    dns.set_fault("slow.example.registry.test", drop=True)
    tempfail = query(dns, "192.0.2.1", "slow.example")
    assert (tempfail.returncode, tempfail.stdout.split()[0]) == (3, "TEMPFAIL")


def test_cli_query_that_cannot_be_made_is_a_usage_error(dns, tmp_path):
    bad = tmp_path / "checkid.toml"
    bad.write_text('[dns]\ntimeout = "soon"\n')
    out = query(dns, "192.0.2.1", "example.com", "-c", str(bad))
    assert out.returncode == 2 and "dns.timeout" in out.stderr
    assert subprocess.run([sys.executable, "-m", "checkid", "query"], capture_output=True, timeout=60).returncode == 2
