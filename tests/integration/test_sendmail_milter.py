"""A real Sendmail 8.17 with checkid as its milter, the client on IPv6 (docs/sendmail.md)."""
from __future__ import annotations

import re
import smtplib

import pytest

from testsupport.mta import Sendmail
from testsupport.processes import Checkid, free_port, world_readable_tmpdir


@pytest.fixture(scope="module")
def sendmail(dns_server):
    milter_port, smtp_port = free_port(), free_port()
    toml = f"""
[[listen]]
protocol = "milter"
address = "127.0.0.1:{milter_port}"
[prescreen]
allow = []          # the test client is ::1: check it like any other
[dns]
nameservers = ["{dns_server.address}"]
timeout = 0.5
[registry]
zone = "registry.test"
"""
    with Checkid(toml, world_readable_tmpdir("checkid-milter-"), [milter_port]), \
            Sendmail(smtp_port, milter_port) as mta:
        yield mta


def test_sendmail_rejects_an_ipv6_client_with_checkid_code_and_text(sendmail, dns):
    client = smtplib.SMTP("::1", sendmail.port, timeout=30)
    client.ehlo("example.net")
    code, text = client.mail("alice@example.net")
    client.quit()
    assert code == 550
    assert re.fullmatch(r"5\.7\.1 <alice@example\.net>\.\.\. Sending MTA '(::1|0:0:0:0:0:0:0:1)' not authorized "
                        r"by 'example\.net'", text.decode())


def test_sendmail_accepts_and_the_authent_header_is_on_top(sendmail, dns):
    client = smtplib.SMTP("::1", sendmail.port, timeout=30)
    client.ehlo("loopback.example")
    assert client.mail("alice@loopback.example")[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    code, text = client.data(b"Subject: test\r\n\r\nhello\r\n")
    client.quit()
    assert code == 250, text
    queue_id = re.search(r"2\.0\.0 (\S+) Message accepted", text.decode()).group(1)
    headers = [h for h in sendmail.headers(queue_id) if not h.startswith("Return-Path:")]
    assert headers[0] == "Authent: ::1 loopback.example QR1 PASS ratings=S1:A,M2:A"
    assert headers[1].startswith("Received: from loopback.example")
