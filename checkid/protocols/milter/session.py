"""One milter connection: MTA commands to engine calls, decisions to milter responses.

Invariants (reference/milter.md §10): exactly one verdict per command that expects one;
none for MACRO, ABORT, QUIT, QUIT_NC or a command whose no-reply bit was negotiated;
modifications only at end of message, before its verdict. Order is lenient, as libmilter's:
only OPTNEG must come first. Connection state (``Connection``) lives until QUIT or
QUIT_NC; message state (``Transaction``) is reset by ABORT and after end of message.

Time is a parameter (reference/anchors.md, aioquic): :meth:`MilterSession.handle` takes
``now``; while a decision at end of message is pending, :meth:`MilterSession.get_timer`
is the next PROGRESS deadline and :meth:`MilterSession.handle_timer` gives the PROGRESS to
send. The server arms the loop's timer; this module does no I/O.

The identity is the HELO name: an SMTP ``ID`` verb cannot succeed through a milter
(§6). When the MTA passes one to UNKNOWN anyway (Sendmail sends the whole line), its
argument is recorded as the declared ID and the MTA rejects the verb as usual.
"""
from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from checkid.engine.decision import Action, Decision, Envelope
from checkid.errors import ProtocolError
from checkid.protocols.decider import Decider, timed_decide
from checkid.protocols.milter import replies
from checkid.protocols.milter.events import (CONTINUE, PROGRESS, VERSION, Abort, Body, Command, Connect, Data,
                                             EndOfHeaders, EndOfMessage, Flag, HeaderField, Helo, Macro, Mail,
                                             OptNeg, OptNegReply, Proto, Quit, QuitNoClose, Rcpt, Response, Stage,
                                             Unknown)

#: what checkid may do to a message: insert its headers; quarantine FILTERed mail if configured
WANTED_ACTIONS = Flag.ADDHDRS | Flag.QUARANTINE | Flag.SETSYMLIST
#: steps whose reply would only ever be CONTINUE: asked not to be answered (fewer round trips)
NO_REPLY = (Proto.NR_CONN | Proto.NR_HELO | Proto.NR_DATA | Proto.NR_HDR | Proto.NR_EOH | Proto.NR_BODY
            | Proto.NR_UNKN)
#: macros asked for with the OPTNEG macro-list extension
MACROS = ((Stage.CONNECT, "j {client_addr}"), (Stage.ENVFROM, "i {mail_addr}"), (Stage.ENVRCPT, "i"),
          (Stage.DATA, "i"), (Stage.EOM, "i"))
#: what a message may hold for a decision at end of message
MAX_HEADERS = 1000
MAX_HEADER_BYTES = 1024 * 1024
MAX_BODY = 1024 * 1024


class State(enum.Enum):
    #: waiting for OPTNEG, the first packet of every connection
    NEGOTIATE = "negotiate"
    #: negotiated; connection and messages follow in any order
    READY = "ready"


@dataclass(frozen=True, slots=True)
class MilterOptions:
    #: decide at MAIL FROM (default) or at the first RCPT TO
    decide_at: str = "MAIL"
    #: quarantine reason for FILTERed mail ("" = do not quarantine)
    quarantine: str = ""
    #: seconds between PROGRESS packets while a decision at end of message is pending
    progress_interval: float = 5.0


@dataclass
class Connection:
    hostname: str = ""
    #: client address; None for local (family L) or unknown (U) connections: not judged
    ip: str | None = None
    helo: str | None = None
    declared_id: str | None = None
    macros: dict[str, str] = field(default_factory=dict)


@dataclass
class Transaction:
    sender: str | None = None
    rcpts: list[str] = field(default_factory=list)
    decision: Decision | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    header_bytes: int = 0
    body: bytearray = field(default_factory=bytearray)


class MilterSession:
    """Answers one MTA connection's commands in order."""

    def __init__(self, decider: Decider, options: MilterOptions, front: str = "milter") -> None:
        self.decider = decider
        self.options = options
        self.front = front
        self.state = State.NEGOTIATE
        self.actions = 0
        self.protocol = 0
        self.conn = Connection()
        self.tx = Transaction()
        #: set by QUIT: the MTA closes; so may we
        self.closed = False
        #: the time given with the command being handled
        self._now = 0.0
        #: when the next PROGRESS is due (a decision at end of message is pending), else None
        self._progress_at: float | None = None
        self._handlers: dict[type, Callable[[Any], Awaitable[list[Response]]]] = {
            OptNeg: self._on_optneg, Macro: self._on_macro, Connect: self._on_connect, Helo: self._on_helo,
            Mail: self._on_mail, Rcpt: self._on_rcpt, Data: self._on_data, HeaderField: self._on_header,
            EndOfHeaders: self._on_eoh, Body: self._on_body, EndOfMessage: self._on_eom,
            Unknown: self._on_unknown, Abort: self._on_abort, Quit: self._on_quit,
            QuitNoClose: self._on_quit_nc,
        }

    async def handle(self, command: Command, now: float) -> list[Response]:
        """The responses to one command ([] when none is due), received at ``now``.

        :raises ProtocolError: on a command out of place
        """
        self._now = now
        if self.state is State.NEGOTIATE and not isinstance(command, OptNeg):
            raise ProtocolError(f"{type(command).__name__} before option negotiation")
        if self.state is State.READY and isinstance(command, OptNeg):
            raise ProtocolError("second option negotiation on one connection")
        return await self._handlers[type(command)](command)

    @property
    def in_message(self) -> bool:
        """Whether a message is open (MAIL seen, its end of message or ABORT not yet)."""
        return self.tx.sender is not None

    def get_timer(self) -> float | None:
        """When the next PROGRESS is due, or None when no decision at end of message waits."""
        return self._progress_at

    def handle_timer(self, now: float) -> list[Response]:
        """What to send at ``now``: PROGRESS when it is due (Sendmail waits 10 s per read by
        default, a slow decision at end of message must show it is alive)."""
        if self._progress_at is None or now < self._progress_at:
            return []
        self._progress_at = now + self.options.progress_interval
        return [PROGRESS]

    def _reply(self, no_reply_bit: Proto) -> list[Response]:
        return [] if self.protocol & no_reply_bit else [CONTINUE]

    # -- connection ---------------------------------------------------------------------
    async def _on_optneg(self, cmd: OptNeg) -> list[Response]:
        if cmd.version < 2:
            raise ProtocolError(f"milter protocol version {cmd.version} is not supported")
        self.actions = WANTED_ACTIONS & cmd.actions if cmd.actions else Flag.ADDHDRS | Flag.QUARANTINE
        if not self.options.quarantine:
            self.actions &= ~Flag.QUARANTINE
        self.protocol = NO_REPLY & cmd.protocol if cmd.version >= 6 else 0
        self.state = State.READY
        macros = MACROS if self.actions & Flag.SETSYMLIST else ()
        return [OptNegReply(min(cmd.version, VERSION), int(self.actions), int(self.protocol), macros)]

    async def _on_macro(self, cmd: Macro) -> list[Response]:
        for name, value in cmd.macros:
            self.conn.macros[name.strip("{}")] = value
        return []

    async def _on_connect(self, cmd: Connect) -> list[Response]:
        self.conn = Connection(hostname=cmd.hostname, macros=self.conn.macros)
        self.tx = Transaction()
        if cmd.family == "4":
            self.conn.ip = cmd.address
        elif cmd.family == "6":
            address = cmd.address
            self.conn.ip = address[5:] if address[:5].lower() == "ipv6:" else address
        return self._reply(Proto.NR_CONN)

    async def _on_helo(self, cmd: Helo) -> list[Response]:
        self.conn.helo = cmd.name
        self.tx = Transaction()
        return self._reply(Proto.NR_HELO)

    async def _on_unknown(self, cmd: Unknown) -> list[Response]:
        verb, _, arg = cmd.command.strip().partition(" ")
        if verb.upper() == "ID" and arg.strip():
            self.conn.declared_id = arg.strip()
        return self._reply(Proto.NR_UNKN)

    async def _on_quit(self, cmd: Quit) -> list[Response]:
        self.closed = True
        return []

    async def _on_quit_nc(self, cmd: QuitNoClose) -> list[Response]:
        self.conn, self.tx = Connection(), Transaction()  # negotiated options stay
        return []

    # -- message ------------------------------------------------------------------------
    async def _on_abort(self, cmd: Abort) -> list[Response]:
        self.tx = Transaction()
        return []

    async def _on_mail(self, cmd: Mail) -> list[Response]:
        self.tx = Transaction(sender=_address(cmd.args[0]))
        if self.conn.ip is None or self.options.decide_at != "MAIL":
            return [CONTINUE]
        self.tx.decision = await self._decided(self._envelope())
        return [replies.envelope_verdict(self.tx.decision)]

    async def _on_rcpt(self, cmd: Rcpt) -> list[Response]:
        rcpt = _address(cmd.args[0])
        self.tx.rcpts.append(rcpt)
        if self.conn.ip is None:
            return [CONTINUE]
        if self.tx.decision is None:
            self.tx.decision = await self._decided(self._envelope(rcpts=(rcpt,)))
            return [replies.envelope_verdict(self.tx.decision)]
        if self.decider.recipient_class(rcpt):  # this recipient has thresholds of its own
            decision = await self._decided(self._envelope(rcpts=(rcpt,)))
            if decision.action in (Action.REJECT, Action.TEMPFAIL):
                self.tx.rcpts.pop()
                return [replies.reply_code(decision)]
        return [CONTINUE]

    async def _on_data(self, cmd: Data) -> list[Response]:
        return self._reply(Proto.NR_DATA)

    async def _on_header(self, cmd: HeaderField) -> list[Response]:
        size = len(cmd.name) + len(cmd.value)
        if len(self.tx.headers) < MAX_HEADERS and self.tx.header_bytes + size <= MAX_HEADER_BYTES:
            self.tx.headers.append((cmd.name, cmd.value))
            self.tx.header_bytes += size
        return self._reply(Proto.NR_HDR)

    async def _on_eoh(self, cmd: EndOfHeaders) -> list[Response]:
        return self._reply(Proto.NR_EOH)

    async def _on_body(self, cmd: Body) -> list[Response]:
        room = MAX_BODY - len(self.tx.body)
        if room > 0:
            self.tx.body += cmd.chunk[:room]
        return self._reply(Proto.NR_BODY)

    async def _on_eom(self, cmd: EndOfMessage) -> list[Response]:
        tx, self.tx = self.tx, Transaction()
        if cmd.chunk:
            tx.body += cmd.chunk[:max(0, MAX_BODY - len(tx.body))]
        if self.conn.ip is None:
            return [CONTINUE]
        decision = tx.decision
        if decision is None or decision.action is Action.CONTINUE:  # ask again, with the content
            self._progress_at = self._now + self.options.progress_interval
            try:
                decision = await self._decided(self._envelope(tx))
            finally:
                self._progress_at = None
        return replies.end_of_message(decision, bool(self.actions & Flag.ADDHDRS),
                                      self.options.quarantine if self.actions & Flag.QUARANTINE else "")

    # -- helpers ------------------------------------------------------------------------
    def _envelope(self, tx: Transaction | None = None, rcpts: tuple[str, ...] | None = None) -> Envelope:
        tx = tx or self.tx
        return Envelope(ip=self.conn.ip, id=self.conn.declared_id, helo=self.conn.helo, sender=tx.sender,
                        rcpts=rcpts if rcpts is not None else tuple(tx.rcpts), headers=tuple(tx.headers),
                        body=bytes(tx.body) if tx.body or tx.headers else None)

    async def _decided(self, env: Envelope) -> Decision:
        return await timed_decide(self.decider, env, self.front, self.conn.macros.get("i", ""))


def _address(arg: str) -> str:
    """The address of a MAIL/RCPT argument, with or without <> (the null sender is "")."""
    return arg.strip().removeprefix("<").removesuffix(">")
