"""A backend MTA for the front door's session tests: records what it is sent, answers as
told (a real MTA's replies by default), fails when told."""
from __future__ import annotations

from checkid.protocols.smtp.events import Reply
from checkid.protocols.smtp.backend import BackendError

POSTFIX_EHLO = {"PIPELINING": "", "SIZE": "10240000", "VRFY": "", "ETRN": "", "STARTTLS": "",
                "ENHANCEDSTATUSCODES": "", "8BITMIME": "", "DSN": "", "SMTPUTF8": "", "CHUNKING": "",
                "XCLIENT": "NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT"}
QUEUED = Reply(250, ("2.0.0 Ok: queued as 4XyZ12",))


class FakeBackend:
    def __init__(self, extensions: dict[str, str] | None = None, replies: dict[str, Reply] | None = None,
                 fail_connect: bool = False, fail_on: str = "",
                 fail_greeting: bool = False) -> None:
        self.extensions = dict(POSTFIX_EHLO if extensions is None else extensions)
        self.replies = {"MAIL": Reply(250, ("2.1.0 Ok",)), "RCPT": Reply(250, ("2.1.5 Ok",)),
                        "DATA": Reply(354, ("End data with <CR><LF>.<CR><LF>",)), "RSET": Reply(250, ("2.0.0 Ok",)),
                        ".": QUEUED, **(replies or {})}
        self.fail_connect = fail_connect
        #: the connection opens, then the banner (or the first EHLO) is a refusal
        self.fail_greeting = fail_greeting
        self.fail_on = fail_on
        self.connected = False
        self.connects = 0
        self.helos: list[str] = []
        #: every command line, and the content of each message as the backend would read it
        self.lines: list[bytes] = []
        self.content = bytearray()
        #: messages finished with the final dot (their wire content), and aborted ones
        self.messages: list[bytes] = []
        self.aborts = 0
        self.quits = 0

    async def connect(self) -> None:
        await self.open()
        await self.ready()

    async def open(self) -> None:
        self.connects += 1
        if self.fail_connect:
            raise BackendError("connection refused", "connect")
        self.connected = True

    async def ready(self) -> None:
        if self.fail_greeting:
            self.connected = False
            raise BackendError("backend greeted with 554 go away", "refused")

    async def hello(self, helo: str, esmtp: bool = True) -> Reply:
        self._check("EHLO")
        self.helos.append(helo)
        return self.replies.get("EHLO", Reply(250, ("mx.checkid.test",)))

    async def command(self, line: bytes) -> Reply:
        verb = line.split(b" ", 1)[0].strip().decode().upper()
        self._check(verb)
        self.lines.append(line)
        return self.replies[verb]

    def send(self, data: bytes) -> None:
        assert self.connected, "content sent to a closed backend"
        self.content += data

    async def end_data(self) -> Reply:
        self._check(".")
        self.messages.append(bytes(self.content))
        self.content.clear()
        return self.replies["."]

    def abort(self) -> None:
        if self.connected:
            self.aborts += 1
        self.connected = False
        self.content.clear()

    def quit(self) -> None:
        self.quits += 1
        self.connected = False

    def _check(self, verb: str) -> None:
        if not self.connected:
            raise BackendError("not connected")
        if verb == self.fail_on:
            self.connected = False
            raise BackendError("connection lost")

    @property
    def verbs(self) -> list[str]:
        return [line.split(b" ", 1)[0].strip().decode() for line in self.lines]
