"""The SMTP front door behind a real HAProxy (``mode tcp``, ``send-proxy-v2``), relaying to a
real Postfix by XCLIENT (docs/front-door.md): the front door decides on the address HAProxy
gives it, never on its own peer (HAProxy, 127.0.0.1).

Two HAProxy frontends feed the one front door: ``direct`` takes the test's client as a plain
TCP peer (the client binds 127.0.0.2, so the address HAProxy reports differs from HAProxy's
own), and ``chained`` takes a PROXY header from the client itself (``accept-proxy``, a second
load balancer in front) carrying 192.0.2.1, for which the seed's accepting identity exists.
"""
from __future__ import annotations

import re
import shutil

import pytest

from checkid.protocols.smtp.proxyproto import encode_v2
from testsupport.mta import HAProxy, Postfix, ProxySMTP
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

#: the HAProxy side of docs/front-door.md; {…} filled in by the test
HAPROXY = """
defaults
    mode tcp
    timeout connect 5s
    timeout client 5m            # RFC 5321 §4.5.3.2: 5 minutes per command
    timeout server 5m

frontend direct
    bind 127.0.0.1:{direct}
    default_backend checkid

frontend chained
    bind 127.0.0.1:{chained} accept-proxy
    default_backend checkid

backend checkid
    server door 127.0.0.1:{door} send-proxy-v2
"""


@pytest.fixture(scope="module")
def stack(dns_server):
    door, postfix_port, direct, chained = free_port(), free_port(), free_port(), free_port()
    toml = f"""
[[listen]]
protocol = "smtp"
address = "127.0.0.1:{door}"
backend = "127.0.0.1:{postfix_port}"
backend_client = "xclient"
proxy_protocol = true
proxy_hosts = ["127.0.0.1"]
[smtp]
hostname = "door.checkid.test"
backend_timeout = 10.0
[prescreen]
allow = []          # 127.0.0.2 is a test client here: check it like any other
[dns]
nameservers = ["{dns_server.address}"]
timeout = 0.5
[registry]
zone = "registry.test"
"""
    haproxy = HAPROXY.format(direct=direct, chained=chained, door=door)
    workdir = world_readable_tmpdir("checkid-frontdoor-")
    try:
        with Postfix(postfix_port, {}) as mta, \
                Checkid(toml, workdir, [door]), \
                HAProxy(haproxy, [direct, chained]):
            yield {"direct": direct, "chained": chained, "postfix": mta}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def headers(listing: str) -> list[str]:
    block = listing.split("*** MESSAGE CONTENTS", 1)[1].split("\n", 1)[1]
    return [line for line in block.split("\n\n", 1)[0].splitlines() if line and not line[0].isspace()]


@pytest.mark.parametrize(("source", "refusal"), [
    # the RFC 5782 test entry of the DNSBL: listed, where HAProxy's own 127.0.0.1 is not
    ("127.0.0.2", "5.7.1 Client host [127.0.0.2] blocked using Spamhaus ZEN (SBL)"),
    # not listed: the registry's answer for the address, as for 192.0.2.1 in DESIGN.md
    ("127.0.0.3", "5.7.1 Sending MTA '127.0.0.3' not authorized by 'example.net'"),
])
def test_the_decision_names_the_address_haproxy_saw(stack, dns, source, refusal):
    client = ProxySMTP("127.0.0.1", stack["direct"], source=source)
    client.ehlo("example.net")
    assert client.has_extn("id")  # the front door's EHLO, through HAProxy
    code, text = client.mail("alice@example.net")
    client.quit()
    assert (code, text.decode()) == (550, refusal)


def test_an_address_haproxy_was_given_is_decided_on_and_reaches_postfix(stack, dns):
    chained, mta = stack["chained"], stack["postfix"]
    client = ProxySMTP("127.0.0.1", chained, header=encode_v2("192.0.2.1", 40000, "127.0.0.1", chained))
    client.ehlo("mail.example.com")
    assert client.docmd("ID", "example.com")[0] == 250
    assert client.mail("alice@example.com")[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    code, text = client.data(b"Subject: through haproxy\r\nFrom: <alice@example.com>\r\n\r\nhello\r\n")
    client.quit()
    assert code == 250, text
    queue_id = re.search(r"queued as ([0-9A-Za-z]+)", text.decode()).group(1)
    top = headers(mta.postcat(queue_id))
    assert top[0].startswith("Received: from mail.example.com (unknown [192.0.2.1])")
    assert top[1] == "Authent: 192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"
    assert f"{queue_id}: client=unknown[192.0.2.1]" in mta.maillog
