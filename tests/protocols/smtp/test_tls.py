"""STARTTLS at the front door over real loopback sockets, with a certificate made here by
openssl: a whole transaction through TLS (smtplib), the session starting over after the
handshake, the command injection of CVE-2011-0411, a failed handshake, and STARTTLS to the
backend (opportunistic, required, and falling back when the backend's TLS is broken)."""
from __future__ import annotations

import asyncio
import smtplib
import ssl
import subprocess

import pytest

from checkid.config import SmtpConfig
from checkid.errors import ConfigError
from checkid.protocols.smtp import codec
from checkid.protocols.smtp.listener import tls_context
from tests.conftest import run
from tests.protocols.fakes import AUTHENT, Decider, until
from tests.protocols.smtp.test_limits import exported
from tests.protocols.smtp.test_server import EHLO_KEYWORDS, MESSAGE, FakeMta, SmtpClient, stack

#: a bound for the blocking smtplib client, never a wait for something to happen
CLIENT_TIMEOUT = 30


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost: (cert path, key path)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def smtp(cert, **kw) -> SmtpConfig:
    return SmtpConfig(tls_cert=cert[0], tls_key=cert[1], **kw)


def client_context(cert) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert[0])


def server_context(cert) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    return context


def test_a_whole_transaction_through_starttls_with_smtplib(cert):
    def send(port):
        with smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT) as s:
            s.ehlo("client.example.com")
            offered = s.has_extn("starttls")
            s.starttls(context=client_context(cert))
            s.ehlo("client.example.com")
            after = dict(s.esmtp_features)
            declared = s.docmd("ID", "example.com")
            refused = s.sendmail("a@example.com", ["b@example.org"], MESSAGE)
            cipher = s.sock.cipher()
        return offered, after, declared, refused, cipher

    async def go():
        decider = Decider()
        mta, door, port = await stack(decider, smtp=smtp(cert))
        result = await asyncio.get_running_loop().run_in_executor(None, send, port)
        await until(lambda: not door.state.connections, turns=100_000)
        await door.stop()
        mta.stop()
        return decider, mta, door, result

    decider, mta, door, (offered, after, declared, refused, cipher) = run(go())
    assert offered and "starttls" not in after and "id" in after  # RFC 3207 §4.2: not offered again
    assert declared[0] == 250 and refused == {} and cipher is not None
    assert (decider.envelopes[0].id, decider.envelopes[0].sender) == ("example.com", "a@example.com")
    (message,) = mta.messages
    assert message.startswith(b"Authent: " + AUTHENT.text.encode() + b"\r\n") and b"Subject: hi" in message
    lines = mta.connections[0].lines
    assert b"STARTTLS" not in lines  # TLS to the client is the front door's; backend_tls = "no"
    assert door.state.counts[("smtp_tls_handshakes", "client", "ok")] == 1
    assert door.state.counts[("smtp_transactions", "relayed")] == 1 and exported(door.state.counts)


def test_commands_pipelined_after_starttls_are_dropped_not_run_inside_tls(cert):
    async def go():
        decider = Decider()
        mta, door, port = await stack(decider, smtp=smtp(cert))
        client = await SmtpClient.open(port)
        await client.replies(1)
        # CVE-2011-0411: plaintext after STARTTLS in the same packet must not count as TLS input
        injected = b"EHLO c.example\r\nID example.net\r\nSTARTTLS\r\nMAIL FROM:<evil@example.com>\r\nRSET\r\n"
        ehlo, declared, ready = await client.send(injected, 3)
        await client.writer.start_tls(client_context(cert))
        after = await client.send(b"EHLO c.example\r\nMAIL FROM:<ok@example.com>\r\nQUIT\r\n", 3)
        client.close()
        await door.stop()
        mta.stop()
        return decider, mta, door, ready, after

    decider, mta, door, ready, after = run(go())
    assert (ready.code, ready.text) == (220, "2.0.0 Ready to start TLS")
    ehlo, mail, bye = after
    assert ehlo.code == 250 and ehlo.lines[0].endswith("greets c.example")  # EHLO's own reply, nothing before it
    assert (mail.code, bye.code) == (250, 221)
    assert [e.sender for e in decider.envelopes] == ["ok@example.com"]
    assert decider.envelopes[0].id is None  # the ID declared before TLS is forgotten
    assert not any(b"evil" in line for line in mta.connections[0].lines)
    assert door.state.counts[("smtp_starttls_pipelined",)] == 1 and exported(door.state.counts)


def test_a_failed_handshake_closes_that_connection_and_its_backend(cert):
    async def go():
        mta, door, port = await stack(Decider(), smtp=smtp(cert))
        client = await SmtpClient.open(port)
        await client.replies(1)
        await client.send(b"STARTTLS\r\n", 1)
        client.writer.write(b"MAIL FROM:<plaintext@example.com>\r\n" * 10)  # not a ClientHello
        await client.reader.read()  # the server ends the connection (perhaps after a TLS alert)
        await until(lambda: not door.state.connections and mta.connections[0].closed, turns=100_000)
        client.close()
        await door.stop()
        mta.stop()
        return door, mta

    door, mta = run(go())
    assert door.state.counts[("smtp_tls_handshakes", "client", "failed")] == 1
    assert not any(line.startswith(b"MAIL") for line in mta.connections[0].lines)


def test_a_certificate_that_cannot_load_is_a_config_error(cert, tmp_path):
    assert tls_context(SmtpConfig()) is None
    assert isinstance(tls_context(smtp(cert)), ssl.SSLContext)
    with pytest.raises(ConfigError, match="smtp.tls_cert: cannot load"):
        tls_context(SmtpConfig(tls_cert=str(tmp_path / "missing.pem"), tls_key=cert[1]))
    with pytest.raises(ConfigError, match="smtp.tls_cert: cannot load"):
        tls_context(SmtpConfig(tls_cert=cert[1], tls_key=cert[1]))  # a key is not a certificate


# -- to the backend -------------------------------------------------------------------------
def relay_one(mta, backend_tls):
    """One message through the door; its replies and the door."""
    async def go():
        mta_, door, port = await stack(Decider(), mta, smtp=SmtpConfig(backend_tls=backend_tls))
        client = await SmtpClient.open(port)
        out = await client.replies(1)
        if out[0].code == 220:
            out += await client.send(b"EHLO c.example\r\n", 1)
        if out[-1].code == 250:
            out += await client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n", 3)
            out += await client.send(codec.encode_data(MESSAGE) + b"QUIT\r\n", 2)
        client.close()
        await door.stop()
        mta.stop()
        return out, door
    return run(go())


def test_opportunistic_backend_tls_relays_through_tls_and_ehlos_again(cert):
    mta = FakeMta(tls=server_context(cert))
    out, door = relay_one(mta, "opportunistic")
    assert [r.code for r in out] == [220, 250, 250, 250, 354, 250, 221]
    (conn,) = mta.connections
    assert conn.tls and conn.lines[1] == b"STARTTLS" and conn.lines[2].startswith(b"EHLO ")
    assert any(line.startswith(b"XCLIENT") for line in conn.lines[3:])  # after TLS: still who the client is
    assert len(mta.messages) == 1
    assert door.state.counts[("smtp_tls_handshakes", "backend", "ok")] == 1


def test_required_backend_tls_without_starttls_offered_is_421_and_nothing_relayed():
    mta = FakeMta(keywords=[k for k in EHLO_KEYWORDS if k != "STARTTLS"])
    out, door = relay_one(mta, "required")
    # the backend's greeting goes on while the client reads the banner: its EHLO gets the 421
    assert [(r.code, r.xcode) for r in out] == [(220, ""), (421, "4.3.0")]
    assert door.state.counts[("smtp_relay_errors", "tls")] == 1 and mta.messages == []


def test_opportunistic_backend_tls_falls_back_to_plaintext_when_the_handshake_fails():
    mta = FakeMta(tls=None)  # offers STARTTLS, answers 220, then speaks plaintext
    out, door = relay_one(mta, "opportunistic")
    assert [r.code for r in out] == [220, 250, 250, 250, 354, 250, 221]
    first, second = mta.connections
    assert b"STARTTLS" in first.lines and b"STARTTLS" not in second.lines
    assert len(mta.messages) == 1
    assert door.state.counts[("smtp_tls_handshakes", "backend", "failed")] == 1 and exported(door.state.counts)


def test_required_backend_tls_with_a_broken_handshake_relays_nothing():
    mta = FakeMta(tls=None)
    out, door = relay_one(mta, "required")
    assert [(r.code, r.xcode) for r in out] == [(220, ""), (421, "4.3.0")] and len(mta.connections) == 1
    assert mta.messages == [] and not any(line.startswith(b"MAIL") for line in mta.connections[0].lines)


def test_check_config_refuses_a_front_door_certificate_that_does_not_load(tmp_path):
    """Found at start (and by check-config), not by workers that then cannot start."""
    import subprocess
    import sys

    (tmp_path / "bad.pem").write_text("not a certificate\n")
    config = tmp_path / "checkid.toml"
    config.write_text(f'[[listen]]\nprotocol = "smtp"\naddress = "127.0.0.1:2525"\nbackend = "127.0.0.1:2526"\n'
                      f'[smtp]\ntls_cert = "{tmp_path / "bad.pem"}"\ntls_key = "{tmp_path / "bad.pem"}"\n')
    out = subprocess.run([sys.executable, "-m", "checkid", "check-config", "-c", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and "smtp.tls_cert" in out.stderr
