"""The SMTP front door in front of a real Exim 4.96 that takes the client address from the
PROXY protocol (``hosts_proxy``; docs/front-door.md). As in test_frontdoor_postfix.py, the
test client speaks for 192.0.2.1 through a PROXY v2 header to the front door."""
from __future__ import annotations

import re
import shutil

import pytest

from checkid.protocols.smtp.proxyproto import encode_v2
from testsupport.mta import Exim, ProxySMTP, wait_until
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

CLIENT = "192.0.2.1"

#: the Exim side of docs/front-door.md; @ROOT@ and @PORT@ are filled in by testsupport.mta.Exim
CONFIG = """
primary_hostname = mx.checkid.test
spool_directory = @ROOT@/spool
log_file_path = @ROOT@/log/%slog
exim_user = Debian-exim
exim_group = Debian-exim
never_users = root
local_interfaces = 127.0.0.1
daemon_smtp_ports = @PORT@
host_lookup =
rfc1413_hosts =
queue_only = true
log_selector = +proxy
domainlist relay_to_domains = example.org

# the front door on loopback sends a PROXY v2 header first on every connection
hosts_proxy = 127.0.0.1

acl_smtp_rcpt = acl_check_rcpt

begin acl

acl_check_rcpt:
  accept  domains = +relay_to_domains
  deny    message = relay not permitted

begin routers

begin transports
"""


@pytest.fixture(scope="module")
def stack(dns_server):
    door, exim_port = free_port(), free_port()
    toml = f"""
[[listen]]
protocol = "smtp"
address = "127.0.0.1:{door}"
backend = "127.0.0.1:{exim_port}"
backend_client = "proxy"
proxy_protocol = true
proxy_hosts = ["127.0.0.1"]
[smtp]
hostname = "door.checkid.test"
backend_timeout = 10.0
[dns]
nameservers = ["{dns_server.address}"]
timeout = 0.5
[registry]
zone = "registry.test"
"""
    workdir = world_readable_tmpdir("checkid-frontdoor-")
    try:
        with Exim(exim_port, CONFIG) as mta, \
                Checkid(toml, workdir, [door]):
            yield door, mta
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def connect(door: int) -> ProxySMTP:
    return ProxySMTP("127.0.0.1", door, header=encode_v2(CLIENT, 40000, "127.0.0.1", door))


def test_exim_queues_an_accepted_message_with_authent_and_the_client_address(stack, dns):
    door, mta = stack
    client = connect(door)
    client.ehlo("mail.example.com")
    assert client.has_extn("id")
    assert client.docmd("ID", "example.com")[0] == 250
    assert client.mail("alice@example.com")[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    code, text = client.data(b"Subject: test\r\nFrom: <alice@example.com>\r\n\r\nhello\r\n")
    client.quit()
    assert code == 250, text
    message_id = re.search(r"id=(\S+)", text.decode()).group(1)  # Exim's own reply, passed on
    assert message_id in mta.queue_ids()
    # the spool header file: one line per header, "NNNf Name: value"; Exim's Received first
    spool = mta.headers(message_id)
    headers = re.findall(r"(?m)^\d{3}. (\S+: .*)$", spool)
    assert headers[0].startswith(f"Received: from [{CLIENT}] (helo=mail.example.com)")
    assert headers[1] == "Authent: 192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"
    assert sum(h.startswith("Authent:") for h in headers) == 1
    wait_until(lambda: f"<= alice@example.com H=(mail.example.com) [{CLIENT}]" in mta.mainlog,
               "Exim logged no arrival from the client's address")
    arrival = next(line for line in mta.mainlog.splitlines() if message_id in line and " <= " in line)
    assert " PRX=127.0.0.1 " in arrival  # and it knows the proxy it came through


def test_exim_never_sees_a_rejected_message(stack, dns):
    door, mta = stack
    queued = mta.queue_ids()
    client = connect(door)
    client.ehlo("example.net")
    code, text = client.mail("alice@example.net")
    assert (code, text.decode()) == (550, "5.7.1 Sending MTA '192.0.2.1' not authorized by 'example.net'")
    assert client.rcpt("bob@example.org")[0] == 503
    client.quit()
    assert mta.queue_ids() == queued
    assert "alice@example.net" not in mta.mainlog
