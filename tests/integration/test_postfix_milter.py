"""A real Postfix 3.7 with checkid as its milter (smtpd_milters; docs/postfix.md)."""
from __future__ import annotations

import re
import smtplib

import pytest

from testsupport.mta import Postfix
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir


@pytest.fixture(scope="module")
def postfix(dns_server):
    milter_port, smtp_port = free_port(), free_port()
    toml = f"""
[[listen]]
protocol = "milter"
address = "127.0.0.1:{milter_port}"
[prescreen]
allow = []          # the test client is 127.0.0.1: check it like any other
[dns]
nameservers = ["{dns_server.address}"]
timeout = 0.5
[registry]
zone = "registry.test"
"""
    settings = {  # as in docs/postfix.md
        "smtpd_milters": f"inet:127.0.0.1:{milter_port}",
        "milter_protocol": "6",
        "milter_default_action": "tempfail",
    }
    with Checkid(toml, world_readable_tmpdir("checkid-milter-"), [milter_port]) as checkid, \
            Postfix(smtp_port, settings) as mta:
        yield mta, checkid


def smtp(postfix, helo):
    client = smtplib.SMTP("127.0.0.1", postfix.port, timeout=30)
    client.ehlo(helo)
    return client


def send(client, sender, rcpt="bob@example.org"):
    assert client.mail(sender)[0] == 250
    assert client.rcpt(rcpt)[0] == 250
    code, text = client.data(b"Subject: test\r\nFrom: <%s>\r\n\r\nhello\r\n" % sender.encode())
    assert code == 250, text
    return re.search(r"queued as ([0-9A-Za-z]+)", text.decode()).group(1)


def headers(message):
    """The header lines of a postcat listing, in order."""
    block = message.split("*** MESSAGE CONTENTS", 1)[1].split("\n", 1)[1]
    return [line for line in block.split("\n\n", 1)[0].splitlines() if line and not line[0].isspace()]


def test_reject_reaches_the_client_with_checkid_code_and_text(postfix, dns):
    mta, _ = postfix
    client = smtp(mta, "example.net")
    code, text = client.mail("alice@example.net")
    client.quit()
    assert (code, text.decode()) == (550, "5.7.1 Sending MTA '127.0.0.1' not authorized by 'example.net'")


def test_tempfail_gives_4xx(postfix, dns):
    mta, _ = postfix
    dns.set_fault("slow.example.registry.test", drop=True)
    client = smtp(mta, "slow.example")
    code, text = client.mail("alice@slow.example")
    client.quit()
    assert code == 451 and text.decode().startswith("4.4.3 ")


def test_accepted_mail_carries_authent_as_its_topmost_header(postfix, dns):
    mta, _ = postfix
    client = smtp(mta, "loopback.example")
    queue_id = send(client, "alice@loopback.example")
    client.quit()
    top = headers(mta.postcat(queue_id))
    assert top[0] == "Authent: 127.0.0.1 loopback.example QR1 PASS ratings=S1:A,M2:A"
    assert top[1].startswith("Received: from loopback.example")


def test_two_messages_rset_and_a_second_ehlo_on_one_connection(postfix, dns):
    mta, checkid = postfix
    before = checkid.log.read_text().count("checkid.decision")
    client = smtp(mta, "loopback.example")
    first = send(client, "alice@loopback.example")
    assert client.mail("bob@loopback.example")[0] == 250
    client.rset()
    client.ehlo("loopback.example")
    second = send(client, "carol@loopback.example")
    client.ehlo("example.net")  # a new identity mid-session is judged afresh
    code, _ = client.mail("dave@example.net")
    client.quit()
    assert code == 550
    for queue_id in (first, second):
        assert headers(mta.postcat(queue_id))[0].startswith("Authent: 127.0.0.1 loopback.example QR1 PASS")
    # a log file is written at the end of the worker's loop turn, maybe just after the reply
    wait_until(lambda: checkid.log.read_text().count("checkid.decision") - before >= 4, "the decision lines")
    assert checkid.log.read_text().count("checkid.decision") - before == 4
