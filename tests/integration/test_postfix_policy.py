"""A real Postfix 3.7 asks ``checkid serve`` through check_policy_service (docs/postfix.md)."""
from __future__ import annotations

import re
import smtplib

import pytest

from checkid.protocols.msgpack_rpc.client import Client
from testsupport.mta import Postfix
from testsupport.processes import Checkid, free_port, world_readable_tmpdir


@pytest.fixture(scope="module")
def stack(dns_server):
    policy_port, rpc_port, smtp_port = free_port(), free_port(), free_port()
    workdir = world_readable_tmpdir("checkid-serve-")
    toml = f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{policy_port}"
[[listen]]
protocol = "msgpack-rpc"
address = "127.0.0.1:{rpc_port}"
[dns]
nameservers = ["{dns_server.address}"]
timeout = 0.5
decision_timeout = 3.0
[registry]
zone = "registry.test"
"""
    settings = {
        # as in docs/postfix.md: the policy service after reject_unauth_destination
        "smtpd_recipient_restrictions":
            f"reject_unauth_destination, check_policy_service inet:127.0.0.1:{policy_port}",
        "smtpd_policy_service_timeout": "10s",
    }
    with Checkid(toml, workdir, [policy_port, rpc_port]) as checkid, Postfix(smtp_port, settings) as postfix:
        yield postfix, checkid, rpc_port


def session(postfix, client_ip, helo):
    smtp = smtplib.SMTP("127.0.0.1", postfix.port, timeout=30)
    smtp.ehlo("loopback.test")
    code, _ = smtp.docmd("XCLIENT", f"ADDR={client_ip} NAME=[UNAVAILABLE] HELO={helo}")
    assert code == 220
    smtp.ehlo(helo)
    return smtp


def decisions(rpc_port):
    with Client(f"127.0.0.1:{rpc_port}") as c:
        stats = c.call("stats")
    return sum(v for k, v in stats.items() if k.startswith("decisions:"))


def test_reject_reaches_the_smtp_client_with_checkid_code_and_text(stack, dns):
    postfix, _, _ = stack
    smtp = session(postfix, "192.0.2.1", "example.net")
    assert smtp.mail("alice@example.net")[0] == 250
    code, text = smtp.rcpt("bob@example.org")
    smtp.quit()
    assert code == 550
    assert text.decode().startswith("5.7.1 ")
    assert "Sending MTA '192.0.2.1' not authorized by 'example.net'" in text.decode()


def test_tempfail_gives_4xx(stack, dns):
    postfix, _, _ = stack
    dns.set_fault("slow.example.registry.test", drop=True)
    smtp = session(postfix, "192.0.2.1", "slow.example")
    smtp.mail("alice@slow.example")
    code, text = smtp.rcpt("bob@example.org")
    smtp.quit()
    assert code == 451 and text.decode().startswith("4.4.3 ")


def send(smtp, sender, rcpts):
    assert smtp.mail(sender)[0] == 250
    for rcpt in rcpts:
        code, text = smtp.rcpt(rcpt)
        assert code == 250, text
    code, text = smtp.data(b"Subject: test\r\nFrom: <%s>\r\n\r\nhello\r\n" % sender.encode())
    assert code == 250, text
    return re.search(r"queued as ([0-9A-Za-z]+)", text.decode()).group(1)


def test_accepted_mail_is_queued_with_the_authent_header(stack, dns):
    postfix, _, _ = stack
    smtp = session(postfix, "192.0.2.1", "example.com")
    queue_id = send(smtp, "alice@example.com", ["bob@example.org"])
    smtp.quit()
    message = postfix.postcat(queue_id)
    assert "Authent: 192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B" in message


def test_multi_recipient_message_is_decided_once_with_one_header(stack, dns):
    postfix, _, rpc_port = stack
    before = decisions(rpc_port)
    smtp = session(postfix, "192.0.2.1", "example.com")
    queue_id = send(smtp, "alice@example.com", ["a@example.org", "b@example.org", "c@example.org"])
    smtp.quit()
    assert decisions(rpc_port) == before + 1
    assert postfix.postcat(queue_id).count("Authent: ") == 1
