"""The SMTP front door in front of a real Postfix 3.7 (docs/front-door.md), mail sent by
smtplib: the backend learns the client by XCLIENT, or by a PROXY v2 header.

The client address the engine sees comes from a PROXY v2 header the test writes before SMTP
(the listeners take it from 127.0.0.1 only), not from the loopback connection itself: so the
seed decisions for 192.0.2.1 hold as DESIGN.md states them, the default ``[prescreen] allow``
(loopback) stays as shipped, and an address Postfix logs can only have come through the
front door, never from the front door's own connection to it (127.0.0.1).
"""
from __future__ import annotations

import re
import shutil
import smtplib
import socket

import pytest

from checkid.protocols.smtp.proxyproto import encode_v2
from testsupport.mta import Postfix, ProxySMTP, wait_until
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

CLIENT = "192.0.2.1"
AUTHENT = "Authent: 192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"


@pytest.fixture(scope="module")
def stack(dns_server):
    """checkid with two front doors: XCLIENT to one Postfix, PROXY v2 to another."""
    door_x, door_p, postfix_x, postfix_p = free_port(), free_port(), free_port(), free_port()
    toml = f"""
[[listen]]
protocol = "smtp"
address = "127.0.0.1:{door_x}"
backend = "127.0.0.1:{postfix_x}"
backend_client = "xclient"
proxy_protocol = true
proxy_hosts = ["127.0.0.1"]
[[listen]]
protocol = "smtp"
address = "127.0.0.1:{door_p}"
backend = "127.0.0.1:{postfix_p}"
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
    # as in docs/front-door.md. smtpd_authorized_xclient_hosts = 127.0.0.0/8 is part of the
    # throwaway Postfix's base settings. Bare newlines are taken as Postfix 3.7 does by default
    # (the weakest backend): the front door alone must stop smuggling.
    xclient = {"smtpd_forbid_bare_newline": "no"}
    proxy = {"smtpd_upstream_proxy_protocol": "haproxy",
             "smtpd_peername_lookup": "no"}  # 192.0.2.1 has no reverse name: ask no resolver
    workdir = world_readable_tmpdir("checkid-frontdoor-")
    try:
        with Checkid(toml, workdir, [door_x, door_p]) as checkid, \
                Postfix(postfix_x, xclient) as mta_x, Postfix(postfix_p, proxy) as mta_p:
            yield {"xclient": (door_x, mta_x), "proxy": (door_p, mta_p), "checkid": checkid}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def connect(door: int, client: str = CLIENT) -> ProxySMTP:
    """An SMTP client of the front door, speaking for ``client`` through a PROXY v2 header."""
    return ProxySMTP("127.0.0.1", door, header=encode_v2(client, 40000, "127.0.0.1", door))


def greeted(door: int, helo: str = "mail.example.com", identity: str | None = "example.com") -> ProxySMTP:
    client = connect(door)
    code, _ = client.ehlo(helo)
    assert code == 250
    if identity is not None:
        assert client.docmd("ID", identity)[0] == 250
    return client


def message(subject: str, sender: str = "alice@example.com") -> bytes:
    return f"Subject: {subject}\r\nFrom: <{sender}>\r\n\r\nhello\r\n".encode()


def send(client: smtplib.SMTP, subject: str, sender: str = "alice@example.com",
         rcpt: str = "bob@example.org") -> str:
    """One accepted message; the backend's queue id from its reply, passed on."""
    assert client.mail(sender)[0] == 250
    assert client.rcpt(rcpt)[0] == 250
    code, text = client.data(message(subject, sender))
    assert code == 250, text
    found = re.search(r"queued as ([0-9A-Za-z]+)", text.decode())
    assert found, text
    return found.group(1)


def headers(listing: str) -> list[str]:
    """The header lines of a postcat listing, in order (continuation lines left out)."""
    block = listing.split("*** MESSAGE CONTENTS", 1)[1].split("\n", 1)[1]
    return [line for line in block.split("\n\n", 1)[0].splitlines() if line and not line[0].isspace()]


def body(listing: str) -> str:
    content = listing.split("*** MESSAGE CONTENTS", 1)[1].split("\n", 1)[1]
    return content.split("\n\n", 1)[1].split("*** HEADER EXTRACTED", 1)[0]


def disconnects(mta: Postfix) -> list[str]:
    """Postfix's end-of-session lines for front-door clients, which name the commands seen."""
    return re.findall(rf"disconnect from unknown\[{re.escape(CLIENT)}\].*", mta.maillog)


def wait_for_session_end(mta: Postfix, before: int) -> str:
    """Poll until Postfix has logged one more end of session than ``before``; that line."""
    wait_until(lambda: len(disconnects(mta)) > before, "Postfix logged no end of the session")
    return disconnects(mta)[before]


def test_id_is_advertised_in_ehlo_and_answered_250_and_never_reaches_postfix(stack, dns):
    door, mta = stack["xclient"]
    before = len(disconnects(mta))
    client = connect(door)
    client.ehlo("mail.example.com")
    assert client.has_extn("id")
    assert not client.has_extn("xclient") and not client.has_extn("chunking")
    code, text = client.docmd("ID", "example.com")
    assert code == 250 and text.decode().startswith("2.1.0 ")
    send(client, "declared")
    client.quit()
    session = wait_for_session_end(mta, before)
    # Postfix counts every command it got, unknown ones too ("unknown=N/M")
    assert "unknown=" not in session and " mail=1 rcpt=1 data=1 " in session


def test_reject_reaches_the_client_with_checkid_code_and_text_and_nothing_reaches_the_queue(stack, dns):
    door, mta = stack["xclient"]
    queued, before = mta.queue_ids(), len(disconnects(mta))
    client = greeted(door, helo="example.net", identity=None)
    code, text = client.mail("alice@example.net")
    assert (code, text.decode()) == (550, "5.7.1 Sending MTA '192.0.2.1' not authorized by 'example.net'")
    assert client.rcpt("bob@example.org")[0] == 503  # no transaction was opened
    client.quit()
    session = wait_for_session_end(mta, before)
    assert "mail=" not in session  # the MAIL never reached Postfix
    assert mta.queue_ids() == queued


def test_accepted_mail_is_queued_with_authent_on_top_and_the_client_address_logged(stack, dns):
    door, mta = stack["xclient"]
    client = greeted(door)
    queue_id = send(client, "accepted")
    client.quit()
    top = headers(mta.postcat(queue_id))
    # the backend's own trace line above checkid's headers (RFC 5321 §4.4: each hop prepends)
    assert top[0].startswith(f"Received: from mail.example.com (unknown [{CLIENT}])")
    assert top[1] == AUTHENT
    assert sum(h.startswith("Authent:") for h in top) == 1
    assert f"{queue_id}: client=unknown[{CLIENT}]" in mta.maillog


def test_client_gone_mid_data_leaves_nothing_in_the_queue(stack, dns):
    door, mta = stack["xclient"]
    queued = mta.queue_ids()
    lost = mta.maillog.count("lost connection after DATA")
    client = greeted(door)
    assert client.mail("alice@example.com")[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    client.putcmd("DATA")
    assert client.getreply()[0] == 354
    # Postfix has opened the queue file by now (at MAIL): it must go again
    assert len(mta.queue_ids()) == len(queued) + 1
    client.send(b"Subject: cut short\r\n\r\n" + b"part of a message\r\n" * 200)
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    wait_until(lambda: mta.maillog.count("lost connection after DATA") > lost,
               "Postfix never saw its connection end mid-DATA")
    wait_until(lambda: mta.queue_ids() == queued, "a partial message stayed in the queue")


SMUGGLED = (b"MAIL FROM:<evil@example.net>%(eol)sRCPT TO:<victim@example.org>%(eol)sDATA%(eol)s"
            b"Subject: smuggled%(eol)s%(eol)sevil%(eol)s")


def smuggling(end: bytes, eol: bytes) -> bytes:
    """Message content with its final ``.`` line: a false end of data (``end``) inside it,
    then a second transaction whose content ends at the real end. What an SMTP smuggling
    attack sends (SEC Consult, 2023): a receiver taking ``end`` for the end of data queues
    two messages."""
    return (b"Subject: carrier\r\nFrom: <alice@example.com>\r\n\r\nhello\r\n"
            + end + SMUGGLED % {b"eol": eol} + b"\r\n.\r\n")


FALSE_ENDS = [(b"\n.\n", b"\n"), (b"\r\n.\n", b"\r\n"), (b"\n.\r\n", b"\r\n"), (b"\r.\r", b"\r"),
              (b"\r\n.\r", b"\r\n")]


def test_the_smuggling_payload_does_smuggle_when_sent_to_postfix_itself(stack, dns):
    """The control: this Postfix queues a second message from a bare-LF false end, so the
    next test's single message is the front door's doing."""
    _, mta = stack["xclient"]
    queued = mta.queue_ids()
    with socket.create_connection(("127.0.0.1", mta.port), timeout=30) as sock:
        stream = sock.makefile("rb")
        stream.readline()
        sock.sendall(b"HELO mail.example.com\r\n")
        stream.readline()
        sock.sendall(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        replies = [stream.readline() for _ in range(3)]
        assert replies[-1].startswith(b"354"), replies
        sock.sendall(smuggling(b"\n.\n", b"\n") + b"QUIT\r\n")
        rest = stream.read()
    assert rest.count(b"queued as") == 2, rest
    wait_until(lambda: len(mta.queue_ids() - queued) == 2, "Postfix did not queue the smuggled message")


@pytest.mark.parametrize(("end", "eol"), FALSE_ENDS, ids=["LF.LF", "CRLF.LF", "LF.CRLF", "CR.CR", "CRLF.CR"])
def test_smuggling_never_yields_a_second_message_in_the_queue(stack, dns, end, eol):
    door, mta = stack["xclient"]
    queued = mta.queue_ids()
    client = greeted(door)
    assert client.mail("alice@example.com")[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    client.putcmd("DATA")
    assert client.getreply()[0] == 354
    client.send(smuggling(end, eol))
    code, text = client.getreply()
    assert code == 250, text
    queue_id = re.search(r"queued as ([0-9A-Za-z]+)", text.decode()).group(1)
    client.quit()
    assert mta.queue_ids() - queued == {queue_id}
    listing = mta.postcat(queue_id)
    assert "sender: alice@example.com" in listing and "evil@example.net" not in listing.split("*** MESSAGE")[0]
    # the would-be second transaction is content of the one message
    content = body(listing)
    assert "\nMAIL FROM:<evil@example.net>\nRCPT TO:<victim@example.org>\nDATA\n" in content
    assert "\nevil\n" in content


def test_a_false_end_of_data_stays_in_the_content_as_sent(stack, dns):
    door, mta = stack["xclient"]
    client = greeted(door)
    assert client.mail("alice@example.com")[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    client.putcmd("DATA")
    assert client.getreply()[0] == 354
    client.send(smuggling(b"\n.\n", b"\n"))
    code, text = client.getreply()
    client.quit()
    assert code == 250, text
    queue_id = re.search(r"queued as ([0-9A-Za-z]+)", text.decode()).group(1)
    # normalized to CRLF lines, the lone dot kept (stuffed to the backend, unstuffed by it)
    assert "hello\n\n.\nMAIL FROM:<evil@example.net>\n" in body(mta.postcat(queue_id))


def test_proxy_v2_to_postfix_names_the_client_in_received_and_log(stack, dns):
    door, mta = stack["proxy"]
    client = greeted(door)
    assert not client.has_extn("xclient")
    queue_id = send(client, "proxied")
    client.quit()
    top = headers(mta.postcat(queue_id))
    assert top[0].startswith(f"Received: from mail.example.com (unknown [{CLIENT}])")
    assert top[1] == AUTHENT
    assert f"{queue_id}: client=unknown[{CLIENT}]" in mta.maillog


def test_postfix_stopped_gives_the_client_4xx_and_nothing_is_lost(stack, dns):
    door, mta = stack["xclient"]
    queued = mta.queue_ids()
    client = greeted(door)
    assert client.mail("alice@example.com")[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    mta.halt()
    try:
        # lost mid-session: this transaction fails, the client keeps the message to retry
        client.putcmd("DATA")
        code, text = client.getreply()
        assert code == 451 and text.decode().startswith("4.3.0 "), (code, text)
        client.close()
        # unreachable at connect: 421 in the banner
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            connect(door)
        assert refused.value.smtp_code == 421 and refused.value.smtp_error.decode().startswith("4.3.0 ")
        assert mta.queue_ids() == queued
    finally:
        mta.resume()
    client = greeted(door)
    queue_id = send(client, "retried")
    client.quit()
    assert mta.queue_ids() - queued == {queue_id}
    assert "Subject: retried" in mta.postcat(queue_id)
