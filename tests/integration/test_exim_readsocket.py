"""A real Exim 4.96 asks ``checkid serve`` through ${readsocket} with the policy protocol
(one answer per connection), as docs/exim.md shows."""
from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest

from testsupport.mta import Exim
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

CONFIG = (Path(__file__).parents[1] / "data" / "exim.conf").read_text()


@pytest.fixture(scope="module")
def exim(dns_server):
    policy_port, smtp_port = free_port(), free_port()
    toml = f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{policy_port}"
oneshot = true
[prescreen]
allow = []          # the test client is 127.0.0.1: let it be checked like any other
[dns]
nameservers = ["{dns_server.address}"]
timeout = 0.5
[registry]
zone = "registry.test"
"""
    with Checkid(toml, world_readable_tmpdir("checkid-serve-"), [policy_port]), \
            Exim(smtp_port, CONFIG.replace("@CHECKID@", str(policy_port))) as mta:
        yield mta


def test_exim_rejects_with_checkid_code_and_text(exim, dns):
    smtp = smtplib.SMTP("127.0.0.1", exim.port, timeout=30)
    smtp.ehlo("example.net")
    assert smtp.mail("alice@example.net")[0] == 250
    code, text = smtp.rcpt("bob@example.org")
    smtp.quit()
    assert (code, text.decode()) == (550, "5.7.1 Sending MTA '127.0.0.1' not authorized by 'example.net'")


def test_exim_accepts_and_adds_the_authent_header_once(exim, dns):
    smtp = smtplib.SMTP("127.0.0.1", exim.port, timeout=30)
    smtp.ehlo("loopback.example")
    assert smtp.mail("alice@loopback.example")[0] == 250
    assert smtp.rcpt("bob@example.org")[0] == 250
    assert smtp.rcpt("carol@example.org")[0] == 250
    code, text = smtp.data(b"Subject: test\r\n\r\nhello\r\n")
    smtp.quit()
    assert code == 250, text
    message_id = re.search(r"id=(\S+)", text.decode()).group(1)
    # the spool header file: one line per header, "NNNf Name: value", after the envelope
    headers = re.findall(r"(?m)^\d{3}. (\S+: .*)$", exim.headers(message_id))
    assert headers[0] == "Authent: 127.0.0.1 loopback.example QR1 PASS ratings=S1:A,M2:A"
    assert sum(h.startswith("Authent:") for h in headers) == 1
