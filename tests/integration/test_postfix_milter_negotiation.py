"""A real Postfix 3.7 honours the steps the milter asks away (NOHDRS, NOEOH, NOBODY, NODATA):
it sends only what the decider says it needs, and the verdict, checkid's header and the
removal of forged headers still reach the queued message. The milter runs in-process on
checkid's own server code, over a decider that says what it needs."""
from __future__ import annotations

import asyncio
import smtplib
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from checkid.config import Config, ListenConfig
from checkid.protocols.base import ServerState
from checkid.protocols.milter.session import MilterSession
from checkid.protocols.registry import protocol_factory
from testsupport.mta import Postfix
from testsupport.processes import free_port
from tests.protocols.fakes import ACCEPTED, AUTHENT, Decider, forged_authent

#: bound on starting and stopping the in-process milter
LOOP_SECONDS = 30.0


class Needing(Decider):
    """The fake decider, saying what of a message it needs; the commands each session
    received are counted by type name."""

    __slots__ = ("needs", "received")

    def __init__(self) -> None:
        super().__init__(ACCEPTED, forged=forged_authent)
        self.needs = (True, True)
        self.received: Counter[str] = Counter()

    def content_needed(self) -> tuple[bool, bool]:
        return self.needs


@pytest.fixture(scope="module")
def milter() -> Iterator[tuple[Needing, int]]:
    decider = Needing()
    port = free_port()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    factory = protocol_factory(decider, ServerState(), Config(), ListenConfig("milter", f"127.0.0.1:{port}"))
    server = asyncio.run_coroutine_threadsafe(loop.create_server(factory, "127.0.0.1", port), loop).result(LOOP_SECONDS)
    step = MilterSession.step

    def counted(session: MilterSession, command, now):  # type: ignore[no-untyped-def]
        decider.received[type(command).__name__] += 1
        return step(session, command, now)

    MilterSession.step = counted  # type: ignore[method-assign]
    try:
        yield decider, port
    finally:
        MilterSession.step = step  # type: ignore[method-assign]
        server.close()
        asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(LOOP_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(LOOP_SECONDS)
        loop.close()


@pytest.fixture(scope="module")
def postfix(milter: tuple[Needing, int]) -> Iterator[Postfix]:
    settings = {"smtpd_milters": f"inet:127.0.0.1:{milter[1]}", "milter_protocol": "6",
                "milter_default_action": "tempfail"}
    with Postfix(free_port(), settings) as mta:
        yield mta


def deliver(postfix: Postfix) -> str:
    """One message with a forged Authent header through the MTA: its queued content."""
    client = smtplib.SMTP("127.0.0.1", postfix.port, timeout=30)
    try:
        client.ehlo("example.com")
        assert client.mail("a@example.com")[0] == 250
        assert client.rcpt("bob@example.org")[0] == 250
        code, text = client.data(b"Subject: test\r\nAuthent: forged\r\n\r\nhello\r\n")
        assert code == 250, text
    finally:
        client.quit()
    return postfix.postcat(text.decode().rsplit(" ", 1)[-1])


@pytest.mark.parametrize("needs, absent", [
    ((True, True), {"Data"}),
    ((True, False), {"Data", "EndOfHeaders", "Body"}),
    ((False, False), {"Data", "EndOfHeaders", "Body", "HeaderField"}),
])
def test_postfix_sends_only_what_was_asked_and_the_message_is_handled(milter, postfix, needs, absent):
    decider, _ = milter
    decider.needs = needs
    decider.received.clear()
    content = deliver(postfix)
    assert f"Authent: {AUTHENT.text}" in content  # the verdict's header, inserted at end of message
    sent = set(decider.received)
    assert not sent & absent, decider.received
    assert {"OptNeg", "Connect", "Helo", "Mail", "Rcpt", "EndOfMessage"} <= sent
    assert ("HeaderField" in sent) is needs[0]
    if needs[0]:  # the forged header was seen, so removed
        assert "Authent: forged" not in content
