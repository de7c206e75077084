"""DKIM, forged headers and identity by record through a real Postfix 3.7 with checkid as
its milter (issue 12 "Proof"; docs/postfix.md).

Messages are signed with keys made in the test and published in the running test DNS
server (testsupport/dkimkeys.py). What is proved is read from the queue (postcat): the
headers Postfix stored, parsed with ``authres`` where they are Authentication-Results.
The test client connects from 127.0.0.1, so the identities it speaks for either authorize
no address at all (DKIM only: ``dkim.example``, ``dkim-default.example``) or are reached
through XCLIENT, which Postfix takes from loopback and hands the milter as the client's
address (the MAIL FROM domain test, as 192.0.2.1, in example.com's SPF record).
"""
from __future__ import annotations

import re
import shutil
import smtplib

import authres
import pytest

from testsupport.messages import (AUTHSERV_ID, FILLER, FORGED, altered, dkim_results, fields, message, named, ours,
                                  queued_as, signed, signing_keys, transaction)
from testsupport.mta import Postfix, wait_until
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

RATINGS = "ratings=S1:A,M2:A,H1:B"


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
[headers]
authentication_results = true
authserv_id = "{AUTHSERV_ID}"
"""
    settings = {  # as in docs/postfix.md
        "smtpd_milters": f"inet:127.0.0.1:{milter_port}",
        "milter_protocol": "6",
        "milter_default_action": "tempfail",
    }
    workdir = world_readable_tmpdir("checkid-milter-dkim-")
    try:
        with Checkid(toml, workdir, [milter_port]) as checkid, Postfix(smtp_port, settings) as mta:
            yield mta, checkid
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def keys(dns_server):
    """RSA 2048 and Ed25519 keys, published as ``rsa`` and ``ed`` selectors of the DKIM identities."""
    return signing_keys(dns_server)


def smtp(mta: Postfix, helo: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", mta.port, timeout=30)
    assert client.ehlo(helo)[0] == 250
    return client


#: (key, canonicalization, filler lines): both key types; simple canonicalization, which takes
#: the header fields exactly as sent (the odd spacing and folding of MESSAGE's Subject); a body
#: that arrives in several pieces
SIGNINGS = [("rsa", b"relaxed", 0), ("ed", b"relaxed", 0), ("rsa", b"simple", 0),
            ("ed", b"simple", 3 * 65535 // len(FILLER))]


@pytest.mark.parametrize(("kind", "canon", "filler"), SIGNINGS,
                         ids=["rsa", "ed25519", "rsa-simple", "ed25519-long"])
def test_a_signed_message_of_a_dkim_only_identity_is_accepted_with_dkim_pass_on_top(
        postfix, keys, dns, kind, canon, filler):
    mta, _ = postfix
    client = smtp(mta, "dkim.example")
    data = signed(keys[kind], kind, "dkim.example", filler=filler, canonicalize=(canon, canon))
    code, reply = transaction(client, "alice@dkim.example", data)
    client.quit()
    assert code == 250, reply
    listing = mta.postcat(queued_as(reply))
    top = fields(listing)
    assert top[0] == ("Authent", f"127.0.0.1 dkim.example DKIM PASS {RATINGS}")
    assert [name for name, _ in top].index("Received") > 0  # checkid's headers above Postfix's own
    [results] = ours(listing)
    assert dkim_results(results) == {("pass", "dkim.example")}
    header = authres.parse(f"Authentication-Results: {results}")
    [clause] = header.results
    assert (clause.header_s, clause.header_a) == (kind, keys[kind].algorithm.decode())


def test_a_body_altered_after_signing_is_refused_at_end_of_data_for_an_authoritative_record(postfix, keys, dns):
    mta, _ = postfix
    queued = mta.queue_ids()
    client = smtp(mta, "dkim.example")
    code, reply = transaction(client, "alice@dkim.example", altered(signed(keys["rsa"], "rsa", "dkim.example")))
    client.quit()
    assert (code, reply) == (550, "5.7.1 Sending MTA '127.0.0.1' not authorized by 'dkim.example'")
    wait_until(lambda: mta.queue_ids() == queued, "the refused message stayed in the queue")


def test_a_body_altered_after_signing_is_filtered_for_a_default_record(postfix, keys, dns):
    mta, _ = postfix
    client = smtp(mta, "dkim-default.example")
    code, reply = transaction(client, "alice@dkim-default.example",
                              altered(signed(keys["ed"], "ed", "dkim-default.example")))
    client.quit()
    assert code == 250, reply
    listing = mta.postcat(queued_as(reply))
    assert fields(listing)[0] == ("Authent", "127.0.0.1 dkim-default.example DKIM FAIL ratings=")
    [results] = ours(listing)
    assert dkim_results(results) == {("fail", "dkim-default.example")}


def test_forged_authent_and_authentication_results_are_gone_from_the_queued_message(postfix, keys, dns):
    mta, _ = postfix
    client = smtp(mta, "dkim.example")
    code, reply = transaction(client, "alice@dkim.example", signed(keys["rsa"], "rsa", "dkim.example", FORGED))
    client.quit()
    assert code == 250, reply
    listing = mta.postcat(queued_as(reply))
    # checkid's own, and nothing the client brought
    assert named(listing, "Authent") == [f"127.0.0.1 dkim.example DKIM PASS {RATINGS}"]
    [results] = ours(listing)
    assert dkim_results(results) == {("pass", "dkim.example")}
    assert "forged" not in results
    # another site's results are not this site's to judge
    assert "other.example; spf=pass smtp.mailfrom=dkim.example" in named(listing, "Authentication-Results")
    assert len(named(listing, "Authentication-Results")) == 2
    assert "192.0.2." not in listing.split("*** MESSAGE CONTENTS", 1)[1]


def test_forged_headers_are_removed_from_a_message_decided_at_mail_time_too(postfix, dns):
    """loopback.example passes QR1 at MAIL FROM: no DKIM, and the forged fields go all the same."""
    mta, _ = postfix
    client = smtp(mta, "loopback.example")
    code, reply = transaction(client, "alice@loopback.example", message("loopback.example", FORGED))
    client.quit()
    assert code == 250, reply
    listing = mta.postcat(queued_as(reply))
    assert named(listing, "Authent") == ["127.0.0.1 loopback.example QR1 PASS ratings=S1:A,M2:A"]
    assert len(ours(listing)) == 1
    assert [v for v in named(listing, "Authentication-Results") if v.startswith("other.example;")]
    assert len(named(listing, "Authentication-Results")) == 2


def test_no_declared_id_a_helo_name_without_a_record_authenticates_the_mail_from_domain(postfix, dns):
    """HELO mail.example.com (no registry record), MAIL FROM a@example.com (a record, SPF
    ip4:192.0.2.0/24): the identity is example.com. The client is 192.0.2.1 by XCLIENT."""
    mta, checkid = postfix
    client = smtplib.SMTP("127.0.0.1", mta.port, timeout=30)
    client.ehlo("mail.example.com")
    assert client.has_extn("xclient")
    assert client.docmd("XCLIENT", "ADDR=192.0.2.1 NAME=[UNAVAILABLE]")[0] == 220
    assert client.ehlo("mail.example.com")[0] == 250
    code, reply = transaction(client, "a@example.com", message("example.com"))
    client.quit()
    assert code == 250, reply
    listing = mta.postcat(queued_as(reply))
    assert fields(listing)[0] == ("Authent", f"192.0.2.1 example.com SPF1 PASS {RATINGS}")
    [results] = ours(listing)
    spf = [r for r in authres.parse(f"Authentication-Results: {results}").results if r.method == "spf"]
    assert [(r.result, r.smtp_mailfrom) for r in spf] == [("pass", "example.com")]
    wait_until(lambda: re.search(r"checkid\.decision.* helo=mail\.example\.com from=<a@example\.com> "
                                 r"identity=example\.com identity_from=mail_from ", checkid.log.read_text()),
               "no decision log line names example.com, from the MAIL FROM, as the identity")


def test_one_connection_good_broken_and_good_again_each_decided_on_its_own_message(postfix, keys, dns):
    """Each transaction's body goes to its own hashes: a refusal leaves nothing behind for the next."""
    mta, _ = postfix
    queued = mta.queue_ids()
    client = smtp(mta, "dkim.example")
    good = signed(keys["ed"], "ed", "dkim.example")
    first = transaction(client, "alice@dkim.example", good)
    second = transaction(client, "alice@dkim.example", altered(signed(keys["rsa"], "rsa", "dkim.example")))
    third = transaction(client, "alice@dkim.example", good)
    client.quit()
    assert [code for code, _ in (first, second, third)] == [250, 550, 250], (first, second, third)
    ids = {queued_as(first[1]), queued_as(third[1])}
    wait_until(lambda: mta.queue_ids() - queued == ids, "the queue does not hold exactly the two good messages")
    for queue_id in ids:
        assert fields(mta.postcat(queue_id))[0] == ("Authent", f"127.0.0.1 dkim.example DKIM PASS {RATINGS}")
