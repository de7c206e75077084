"""DKIM, forged headers and identity by record through checkid's SMTP front door with a
real Postfix 3.7 behind it (issue 12 "Proof"; docs/front-door.md).

The client speaks for 192.0.2.1 through a PROXY v2 header, as in test_frontdoor_postfix.py;
Postfix learns it by XCLIENT. Messages are signed with keys made in the test and published
in the running test DNS server (testsupport/dkimkeys.py); what is proved is read from
Postfix's queue (postcat). ``hold`` is set low (64 KiB) so that a message past it, which
streams to the backend before the end-of-data decision, is sent in a few hundred KB.
"""
from __future__ import annotations

import shutil

import authres
import pytest

from checkid.protocols.smtp.proxyproto import encode_v2
from testsupport.messages import (AUTHSERV_ID, FILLER, FORGED, altered, dkim_results, fields, message, named, ours,
                                  queued_as, signed, signing_keys, transaction)
from testsupport.mta import Postfix, ProxySMTP, wait_until
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

CLIENT = "192.0.2.1"
RATINGS = "ratings=S1:A,M2:A,H1:B"
HOLD = 64 * 1024


@pytest.fixture(scope="module")
def stack(dns_server):
    door, backend = free_port(), free_port()
    toml = f"""
[[listen]]
protocol = "smtp"
address = "127.0.0.1:{door}"
backend = "127.0.0.1:{backend}"
backend_client = "xclient"
proxy_protocol = true
proxy_hosts = ["127.0.0.1"]
[smtp]
hostname = "door.checkid.test"
backend_timeout = 10.0
hold = {HOLD}
[dns]
nameservers = ["{dns_server.address}"]
timeout = 0.5
[registry]
zone = "registry.test"
[headers]
authentication_results = true
authserv_id = "{AUTHSERV_ID}"
"""
    workdir = world_readable_tmpdir("checkid-frontdoor-dkim-")
    try:
        with Checkid(toml, workdir, [door]) as checkid, Postfix(backend, {}) as mta:
            yield door, mta, checkid
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def keys(dns_server):
    """RSA 2048 and Ed25519 keys, published as ``rsa`` and ``ed`` selectors of the DKIM identities."""
    return signing_keys(dns_server)


def greeted(door: int, identity: str | None, helo: str = "mail.example.com") -> ProxySMTP:
    client = ProxySMTP("127.0.0.1", door, header=encode_v2(CLIENT, 40000, "127.0.0.1", door))
    assert client.ehlo(helo)[0] == 250
    if identity is not None:
        assert client.docmd("ID", identity)[0] == 250
    return client


def below_received(listing: str) -> list[tuple[str, str]]:
    """The fields under the backend's own trace line (RFC 5321 §4.4: each hop prepends)."""
    top = fields(listing)
    assert top[0][0] == "Received", top[0]
    assert top[0][1].startswith(f"from mail.example.com (unknown [{CLIENT}])"), top[0]
    return top[1:]


#: (key, canonicalization, filler lines): both key types; simple canonicalization, which takes
#: the header fields exactly as sent (the odd spacing and folding of MESSAGE's Subject); a body
#: that arrives in several pieces
SIGNINGS = [("rsa", b"relaxed", 0), ("ed", b"relaxed", 0), ("rsa", b"simple", 0),
            ("ed", b"simple", HOLD // 2 // len(FILLER))]


@pytest.mark.parametrize(("kind", "canon", "filler"), SIGNINGS,
                         ids=["rsa", "ed25519", "rsa-simple", "ed25519-long"])
def test_a_signed_message_of_a_dkim_only_identity_is_accepted_with_dkim_pass_on_top(
        stack, keys, dns, kind, canon, filler):
    door, mta, _ = stack
    client = greeted(door, "dkim.example")
    data = signed(keys[kind], kind, "dkim.example", filler=filler, canonicalize=(canon, canon))
    code, reply = transaction(client, "alice@dkim.example", data)
    client.quit()
    assert code == 250, reply
    listing = mta.postcat(queued_as(reply))
    assert below_received(listing)[0] == ("Authent", f"{CLIENT} dkim.example DKIM PASS {RATINGS}")
    [results] = ours(listing)
    [clause] = authres.parse(f"Authentication-Results: {results}").results
    assert (clause.method, clause.result, clause.header_d, clause.header_s, clause.header_a) == (
        "dkim", "pass", "dkim.example", kind, keys[kind].algorithm.decode())


@pytest.mark.parametrize("filler", [0, 2 * HOLD // len(FILLER)], ids=["held", "streamed"])
def test_a_body_altered_after_signing_is_refused_at_end_of_data_for_an_authoritative_record(
        stack, keys, dns, filler):
    door, mta, _ = stack
    queued = mta.queue_ids()
    client = greeted(door, "dkim.example")
    code, reply = transaction(client, "alice@dkim.example",
                              altered(signed(keys["rsa"], "rsa", "dkim.example", filler=filler)))
    client.quit()
    assert (code, reply) == (550, f"5.7.1 Sending MTA '{CLIENT}' not authorized by 'dkim.example'")
    wait_until(lambda: mta.queue_ids() == queued, "the refused message stayed in the queue")


def test_a_body_altered_after_signing_is_filtered_for_a_default_record(stack, keys, dns):
    door, mta, _ = stack
    client = greeted(door, "dkim-default.example")
    code, reply = transaction(client, "alice@dkim-default.example",
                              altered(signed(keys["ed"], "ed", "dkim-default.example")))
    client.quit()
    assert code == 250, reply
    listing = mta.postcat(queued_as(reply))
    assert below_received(listing)[0] == ("Authent", f"{CLIENT} dkim-default.example DKIM FAIL ratings=")
    [results] = ours(listing)
    assert dkim_results(results) == {("fail", "dkim-default.example")}


def test_forged_authent_and_authentication_results_are_gone_from_the_queued_message(stack, keys, dns):
    door, mta, _ = stack
    client = greeted(door, "dkim.example")
    code, reply = transaction(client, "alice@dkim.example", signed(keys["rsa"], "rsa", "dkim.example", FORGED))
    client.quit()
    assert code == 250, reply
    listing = mta.postcat(queued_as(reply))
    assert named(listing, "Authent") == [f"{CLIENT} dkim.example DKIM PASS {RATINGS}"]
    [results] = ours(listing)
    assert dkim_results(results) == {("pass", "dkim.example")} and "forged" not in results
    # another site's results are not this site's to judge
    assert "other.example; spf=pass smtp.mailfrom=dkim.example" in named(listing, "Authentication-Results")
    assert len(named(listing, "Authentication-Results")) == 2
    assert "192.0.2.2" not in listing and "header.s=forged" not in listing


def test_forged_headers_are_gone_from_a_message_streamed_past_hold(stack, keys, dns):
    """Past ``hold`` the message streams before its decision: checkid's headers can no longer
    be added (docs/front-door.md), the forged ones are left out all the same."""
    door, mta, _ = stack
    client = greeted(door, "dkim.example")
    data = signed(keys["ed"], "ed", "dkim.example", FORGED, filler=2 * HOLD // len(FILLER))
    assert len(data) > HOLD
    code, reply = transaction(client, "alice@dkim.example", data)
    client.quit()
    assert code == 250, reply
    listing = mta.postcat(queued_as(reply))
    assert named(listing, "Authent") == [] and ours(listing) == []
    assert named(listing, "Authentication-Results") == ["other.example; spf=pass smtp.mailfrom=dkim.example"]


def test_no_declared_id_a_helo_name_without_a_record_authenticates_the_mail_from_domain(stack, dns):
    """HELO mail.example.com (no registry record), MAIL FROM a@example.com (a record, SPF
    ip4:192.0.2.0/24), no ID: the identity is example.com."""
    door, mta, _ = stack
    client = greeted(door, None)
    code, reply = transaction(client, "a@example.com", message("example.com"))
    client.quit()
    assert code == 250, reply
    listing = mta.postcat(queued_as(reply))
    assert below_received(listing)[0] == ("Authent", f"{CLIENT} example.com SPF1 PASS {RATINGS}")


def test_one_connection_good_broken_and_good_again_each_decided_on_its_own_message(stack, keys, dns):
    """A refusal at end of data drops that backend connection (no final dot); the next
    transaction of the same client goes through a new one, hashed afresh."""
    door, mta, _ = stack
    queued = mta.queue_ids()
    client = greeted(door, "dkim.example")
    good = signed(keys["ed"], "ed", "dkim.example")
    first = transaction(client, "alice@dkim.example", good)
    second = transaction(client, "alice@dkim.example", altered(signed(keys["rsa"], "rsa", "dkim.example")))
    third = transaction(client, "alice@dkim.example", good)
    client.quit()
    assert [code for code, _ in (first, second, third)] == [250, 550, 250], (first, second, third)
    ids = {queued_as(first[1]), queued_as(third[1])}
    wait_until(lambda: mta.queue_ids() - queued == ids, "the queue does not hold exactly the two good messages")
    for queue_id in ids:
        top = below_received(mta.postcat(queue_id))
        assert top[0] == ("Authent", f"{CLIENT} dkim.example DKIM PASS {RATINGS}")
