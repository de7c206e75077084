"""A real Postfix 3.7 with checkid as its policy service and its milter at once, and in
report mode (issue 13: the decision log joins with Postfix's, ``Authent:`` once, dry run;
docs/postfix.md, docs/operations.md "Dry run, skip lists and the decision log")."""
from __future__ import annotations

import json
import re
import shutil
import smtplib

import pytest

from testsupport.mta import Postfix, wait_until
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

SETTINGS = {  # as in docs/postfix.md, both front-ends, the queue id known from MAIL on
    "milter_protocol": "6",
    "milter_default_action": "tempfail",
    "smtpd_delay_open_until_valid_rcpt": "no",
    "smtpd_client_port_logging": "yes",
}


def toml(dns_server, listeners: dict[str, int], extra: str = "") -> str:
    listen = "".join(f'[[listen]]\nprotocol = "{p}"\naddress = "127.0.0.1:{port}"\n' for p, port in listeners.items())
    return listen + f"""
[prescreen]
allow = []          # the test client is 127.0.0.1: check it like any other
[dns]
nameservers = ["{dns_server.address}"]
timeout = 0.5
[registry]
zone = "registry.test"
[server]
log_format = "json"
{extra}"""


@pytest.fixture(scope="module")
def both(dns_server):
    """Postfix asking checkid's policy service at RCPT and its milter, one checkid."""
    policy_port, milter_port, smtp_port = free_port(), free_port(), free_port()
    workdir = world_readable_tmpdir("checkid-both-")
    settings = {**SETTINGS, "smtpd_milters": f"inet:127.0.0.1:{milter_port}",
                "smtpd_recipient_restrictions":
                    f"reject_unauth_destination, check_policy_service inet:127.0.0.1:{policy_port}"}
    try:
        with Checkid(toml(dns_server, {"policy": policy_port, "milter": milter_port},
                          f'state_dir = "{workdir / "state"}"\nworkers = 1\n'), workdir,
                     [policy_port, milter_port]) as checkid, Postfix(smtp_port, settings) as mta:
            yield mta, checkid
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def reporting(dns_server):
    """Postfix with checkid's milter in report mode, deciding at RCPT (the queue id is known)."""
    milter_port, smtp_port = free_port(), free_port()
    workdir = world_readable_tmpdir("checkid-report-")
    settings = {**SETTINGS, "smtpd_milters": f"inet:127.0.0.1:{milter_port}"}
    try:
        with Checkid(toml(dns_server, {"milter": milter_port},
                          f'state_dir = "{workdir / "state"}"\nworkers = 1\n[policy]\nmode = "report"\n'
                          '[milter]\ndecide_at = "RCPT"\n'), workdir,
                     [milter_port]) as checkid, Postfix(smtp_port, settings) as mta:
            yield mta, checkid
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def send(mta: Postfix, helo: str, sender: str) -> tuple[str, int]:
    """One message from ``sender``; its queue id and the client's port."""
    client = smtplib.SMTP("127.0.0.1", mta.port, timeout=30)
    port = client.sock.getsockname()[1]
    assert client.ehlo(helo)[0] == 250
    assert client.mail(sender)[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    code, text = client.data(b"Subject: test\r\nFrom: <%s>\r\n\r\nhello\r\n" % sender.encode())
    client.quit()
    assert code == 250, text
    found = re.search(r"queued as ([0-9A-Za-z]+)", text.decode())
    assert found, text
    return found.group(1), port


def decision_lines(checkid: Checkid) -> list[dict]:
    lines = [json.loads(line) for line in checkid.log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "checkid.decision"]


def header_fields(listing: str) -> list[str]:
    """The header lines of a postcat listing, in order."""
    block = listing.split("*** MESSAGE CONTENTS", 1)[1].split("\n", 1)[1]
    return [line for line in block.split("\n\n", 1)[0].splitlines() if line and not line[0].isspace()]


def test_policy_service_and_milter_in_one_postfix_add_authent_once(both, dns):
    mta, _ = both
    queue_id, _ = send(mta, "loopback.example", "alice@loopback.example")
    fields = header_fields(mta.postcat(queue_id))
    authents = [f for f in fields if f.lower().startswith("authent:")]
    assert authents == ["Authent: 127.0.0.1 loopback.example QR1 PASS ratings=S1:A,M2:A"], fields
    assert fields[0] == authents[0]


def test_every_decision_line_joins_postfix_log_by_queue_id_or_client_port(both, dns):
    mta, checkid = both
    queue_id, port = send(mta, "loopback.example", "carol@loopback.example")
    wait_until(lambda: len([d for d in decision_lines(checkid) if d.get("from") == "carol@loopback.example"]) == 2,
               "a decision line from the milter and one from the policy service")
    lines = {d["frontend"]: d for d in decision_lines(checkid) if d.get("from") == "carol@loopback.example"}
    for line in lines.values():
        assert (line["ip"], line["client_port"], line["action"], line["code"]) == ("127.0.0.1", port, "ACCEPT", 250)
        assert isinstance(line["latency_ms"], float)
    # the policy request at RCPT carries the queue id (the queue file is open from MAIL on);
    # the milter's MAIL event comes before Postfix opens it: the client port joins that line
    assert lines["policy"]["queue_id"] == queue_id and lines["milter"]["queue_id"] is None
    wait_until(lambda: f"{queue_id}: client=" in mta.maillog, "Postfix's client line")
    assert re.search(rf"{queue_id}: client=\S+\[127\.0\.0\.1\]:{port}\b", mta.maillog), mta.maillog


def test_report_mode_delivers_what_would_be_rejected_and_says_so(reporting, dns):
    mta, checkid = reporting
    queue_id, _ = send(mta, "example.net", "alice@example.net")  # refused when enforcing
    top = header_fields(mta.postcat(queue_id))[0]
    assert top.startswith("Authent: 127.0.0.1 example.net ") and top.endswith(" would=REJECT"), top
    assert top.split()[5].startswith("ratings=")
    wait_until(lambda: any(d.get("queue_id") == queue_id for d in decision_lines(checkid)), "the decision line")
    (line,) = [d for d in decision_lines(checkid) if d.get("queue_id") == queue_id]
    assert (line["action"], line["code"], line["xcode"]) == ("would_reject", 550, "5.7.1")
    assert "not authorized by 'example.net'" in line["text"]
