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

Header values are kept raw, as DKIM hashes them (§8.1): ``HDR_LEADSPC`` is negotiated when
offered (Postfix does), so a value arrives with its leading space; without it the MTA ate
one space and it is put back. Every header is asked :meth:`Decider.forged_header`; the
forged ones are deleted (``CHGHEADER`` with an empty value, by their 1-based index among the
message's headers of that name) at end of message of every message that goes through,
before checkid's own headers are inserted, so the indexes are those of the message as
received. When the end-of-message decision is due, the body is streamed into the sink
:meth:`Decider.body_digest` gives at end of headers; it is never held here.

What the MTA sends is negotiated down to what a decision may read: never DATA (``NODATA``),
no body or end of headers when the decider needs no body, no header either when it needs
none (:func:`~checkid.protocols.decider.content_needed`: no DKIM, no forged-header
removal), and no reply where it would only be CONTINUE (``NR_*``). A body chunk that must
be answered (no ``NR_BODY``) while no decision reads the body gets SKIP (``SMFIP_SKIP``).

Counted in ``counts``: ``("forged_headers_removed", front)`` per header deleted and
``("forged_headers_kept", front)`` per one the MTA did not let us delete (no ``CHGHDRS``).

What a connection holds is bounded (the protocol itself bounds none of it but the packet):
macros (per MACRO packet, per name and value, and in total for the connection) and
recipients per message raise :class:`~checkid.protocols.limits.LimitExceeded` past their
bound, and the server closes the connection; headers past theirs are no longer kept (the
decision is told: ``headers_complete``); headers' names are counted for deletion indexes up
to a bound, and a forged header past it is counted as kept.
"""
from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from checkid.engine.decision import Action, BodySink, Decision, Envelope
from checkid.errors import ProtocolError
from checkid.protocols.decider import Decider, content_needed, timed_decide
from checkid.protocols.limits import LimitExceeded
from checkid.protocols.milter import replies
from checkid.protocols.milter.events import (CONTINUE, PROGRESS, SKIP, VERSION, Abort, Body, ChangeHeader, Command,
                                             Connect, Data, EndOfHeaders, EndOfMessage, Flag, HeaderField, Helo,
                                             Macro, Mail, OptNeg, OptNegReply, Proto, Quit, QuitNoClose, Rcpt,
                                             Response, Stage, Unknown)

log = logging.getLogger(__name__)

#: what checkid may do to a message: insert its headers, delete forged ones; quarantine
#: FILTERed mail if configured
WANTED_ACTIONS = Flag.ADDHDRS | Flag.CHGHDRS | Flag.QUARANTINE | Flag.SETSYMLIST
#: steps whose reply would only ever be CONTINUE: asked not to be answered (fewer round trips)
NO_REPLY = (Proto.NR_CONN | Proto.NR_HELO | Proto.NR_DATA | Proto.NR_HDR | Proto.NR_EOH | Proto.NR_BODY
            | Proto.NR_UNKN)
#: protocol bits asked for when offered: the no-reply steps, header values with their
#: leading space (DKIM hashes ``c=simple`` headers exactly), and no DATA: its reply is always
#: CONTINUE and it carries nothing (Postfix still sends its macros; the queue id comes with
#: those of end of message too)
WANTED_PROTOCOL = NO_REPLY | Proto.HDR_LEADSPC | Proto.NODATA
#: steps asked away when the decider needs no body (:func:`~checkid.protocols.decider.content_needed`):
#: the body chunks, and the end of headers (where a body's sink is chosen)
NO_BODY = Proto.NOBODY | Proto.NOEOH
#: and when it needs no header either (no DKIM, no forged-header removal)
NO_HEADERS = Proto.NOHDRS | Proto.NOEOH
#: macros asked for with the OPTNEG macro-list extension
MACROS = ((Stage.CONNECT, "j {client_addr}"), (Stage.ENVFROM, "i {mail_addr} {auth_authen}"), (Stage.ENVRCPT, "i"),
          (Stage.DATA, "i"), (Stage.EOM, "i"))
#: the macros of one message, forgotten when the MTA sends the next MAIL's (an MTA leaves out
#: a macro it has no value for: the last message's queue id must not be logged again)
MESSAGE_MACROS = ("i", "auth_authen")
#: headers of a message kept for the decision at end of message (the body is streamed to
#: the engine's sink, never held): Postfix's header_size_limit is 100 KiB per header, and a
#: message with more than a thousand headers is not one anybody wants verified
MAX_HEADERS = 1000
MAX_HEADER_BYTES = 1024 * 1024
#: forged headers remembered for deletion per message (each is one CHGHEADER at the end);
#: past it the rest are kept and counted as such
MAX_FORGED = 1000
#: distinct header names (lower-cased) counted per message for the deletion indexes, and
#: their bytes: as many as headers are kept; a forged header of a name not counted cannot be
#: indexed, so it is kept (and counted as such)
MAX_HEADER_NAMES = MAX_HEADERS
MAX_HEADER_NAME_BYTES = 64 * 1024
#: macros in one MACRO packet (one stage): Postfix's default milter_*_macros lists name
#: under a dozen per stage; 64 leaves room for an operator's additions
MAX_MACROS_PER_STAGE = 64
#: a macro name: the longest standard ones ({client_connections}) have about 20 characters
MAX_MACRO_NAME = 128
#: a macro value: Postfix's longest come from SMTP lines (line_length_limit 2048) and
#: certificate names (a few hundred bytes); 8 KiB is four times the longest line
MAX_MACRO_VALUE = 8 * 1024
#: distinct macros a connection keeps (every stage's together, as they are merged), and
#: their bytes (names and values)
MAX_MACROS = 256
MAX_MACRO_BYTES = 64 * 1024
#: recipients of one message: ten times Postfix's smtpd_recipient_limit default (1000);
#: RFC 5321 §4.5.3.1.8 asks an MTA to take at least 100. Sendmail has no default bound
MAX_RCPTS = 10_000
#: their bytes: 10,000 of RFC 5321's longest path (256 octets, §4.5.3.1.3) are 2.5 MiB
MAX_RCPT_BYTES = 4 * 1024 * 1024

#: what a command's handler gives: its responses, or (when it asks for a decision) the
#: coroutine that makes them
Reaction = list[Response] | Coroutine[Any, Any, list[Response]]


#: the no-reply and header bits as plain ints (tested on every command)
_NR_CONN, _NR_HELO, _NR_UNKN, _NR_DATA = int(Proto.NR_CONN), int(Proto.NR_HELO), int(Proto.NR_UNKN), int(Proto.NR_DATA)
_NR_HDR, _NR_EOH, _NR_BODY, _HDR_LEADSPC = (int(Proto.NR_HDR), int(Proto.NR_EOH), int(Proto.NR_BODY),
                                            int(Proto.HDR_LEADSPC))
_WANTED_ACTIONS, _WANTED_PROTOCOL = int(WANTED_ACTIONS), int(WANTED_PROTOCOL)
_NO_BODY, _NO_HEADERS, _NOBODY, _SKIP = int(NO_BODY), int(NO_HEADERS), int(Proto.NOBODY), int(Proto.SKIP)
_ADDHDRS, _CHGHDRS, _QUARANTINE, _SETSYMLIST = (int(Flag.ADDHDRS), int(Flag.CHGHDRS), int(Flag.QUARANTINE),
                                                int(Flag.SETSYMLIST))


class _BodyNotSent:
    """The body of a message on a connection that asked the MTA not to send bodies
    (``SMFIP_NOBODY``, negotiated before a reload made the policy need them): a sink of its
    own kind, so DKIM reports "body not hashed" instead of verifying an empty body (which
    would FAIL every signature)."""

    __slots__ = ()

    def update(self, chunk: bytes) -> None:
        pass


BODY_NOT_SENT = _BodyNotSent()


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
    #: client TCP port (0: unknown), logged to join the MTA's log when no queue id is known
    port: int = 0
    helo: str | None = None
    declared_id: str | None = None
    macros: dict[str, str] = field(default_factory=dict)
    #: bytes of ``macros`` (names and values), against ``MAX_MACRO_BYTES``
    macro_bytes: int = 0


@dataclass
class Transaction:
    sender: str | None = None
    rcpts: list[str] = field(default_factory=list)
    #: bytes of ``rcpts``, against ``MAX_RCPT_BYTES``
    rcpt_bytes: int = 0
    decision: Decision | None = None
    #: the recipient class ``decision`` was made for ("" at MAIL: every recipient's)
    decision_class: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    header_bytes: int = 0
    #: every header is in ``headers`` (False once one was past the bounds)
    headers_complete: bool = True
    #: headers seen so far by lower-case name (all of them, also those not kept), up to
    #: ``MAX_HEADER_NAMES`` names of ``MAX_HEADER_NAME_BYTES``
    seen: dict[str, int] = field(default_factory=dict)
    seen_bytes: int = 0
    #: the forged headers to delete: (name, 1-based index among the headers of that name)
    forged: list[tuple[str, int]] = field(default_factory=list)
    #: where the body goes when the end-of-message decision needs it (asked at end of headers)
    sink: BodySink | None = None
    #: the end-of-message decision is due (asked for the sink at end of headers)
    content_due: bool = False


class MilterSession:
    """Answers one MTA connection's commands in order."""

    def __init__(self, decider: Decider, options: MilterOptions, front: str = "milter",
                 counts: Counter[tuple[str, ...]] | None = None) -> None:
        self.decider = decider
        self.options = options
        self.front = front
        self.counts: Counter[tuple[str, ...]] = Counter() if counts is None else counts
        #: the MTA refused CHGHDRS and that was logged (once per connection)
        self._warned_chghdrs = False
        self.state = State.NEGOTIATE
        #: the negotiated ``Flag`` bits (a plain int)
        self.actions = 0
        #: the negotiated ``Proto`` bits (a plain int; ``_protocol_bits`` is the same, read per command)
        self.protocol = 0
        self._protocol_bits = 0
        self.conn = Connection()
        self.tx = Transaction()
        #: set by QUIT: the MTA closes; so may we
        self.closed = False
        #: the time given with the command being handled
        self._now = 0.0
        #: when the next PROGRESS is due (a decision at end of message is pending), else None
        self._progress_at: float | None = None

    async def handle(self, command: Command, now: float) -> list[Response]:
        """The responses to one command ([] when none is due), received at ``now``.

        :raises ProtocolError: on a command out of place
        """
        reaction = self.step(command, now)
        return reaction if isinstance(reaction, list) else await reaction

    def step(self, command: Command, now: float) -> Reaction:
        """What :meth:`handle` does, without a coroutine for the commands that need no
        decision: their responses at once, else the coroutine that decides and gives them
        (the server drives it; most commands of a session never need one).

        :raises ProtocolError: on a command out of place
        """
        self._now = now
        if (self.state is State.NEGOTIATE) is not (type(command) is OptNeg):
            if self.state is State.READY:
                raise ProtocolError("second option negotiation on one connection")
            raise ProtocolError(f"{type(command).__name__} before option negotiation")
        return _HANDLERS[type(command)](self, command)

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

    def _reply(self, no_reply_bit: int) -> list[Response]:
        return [] if self._protocol_bits & no_reply_bit else [CONTINUE]

    # -- connection ---------------------------------------------------------------------
    def _on_optneg(self, cmd: OptNeg) -> list[Response]:
        if cmd.version < 2:
            raise ProtocolError(f"milter protocol version {cmd.version} is not supported")
        # plain ints: each IntFlag operation makes a new member, and these are tested per message
        actions = _WANTED_ACTIONS & cmd.actions if cmd.actions else _ADDHDRS | _QUARANTINE
        if not self.options.quarantine:
            actions &= ~_QUARANTINE
        self.actions = actions
        self.protocol = self._protocol_bits = self._protocol_for(cmd.protocol) if cmd.version >= 6 else 0
        self.state = State.READY
        macros = MACROS if actions & _SETSYMLIST else ()
        return [OptNegReply(min(cmd.version, VERSION), actions, self.protocol, macros)]

    def _protocol_for(self, offered: int) -> int:
        """The protocol bits to ask of an MTA offering ``offered``: the no-reply steps, no
        DATA, and no body (no headers) when the decider needs none. SKIP when the body
        chunks must be answered (no NR_BODY): a body no decision reads is then cut short at
        its first chunk; with NR_BODY the MTA sends them without waiting, which costs less
        than that round trip for the usual message of one chunk."""
        needs = content_needed(self.decider)
        wanted = _WANTED_PROTOCOL | (0 if needs.body else _NO_BODY) | (0 if needs.headers else _NO_HEADERS)
        protocol = wanted & offered
        if not protocol & (_NR_BODY | _NOBODY):
            protocol |= _SKIP & offered
        return protocol

    def _on_macro(self, cmd: Macro) -> list[Response]:
        """Keep the stage's macros. :raises LimitExceeded: past a macro bound"""
        if len(cmd.macros) > MAX_MACROS_PER_STAGE:
            raise LimitExceeded(f"MACRO with {len(cmd.macros)} macros (at most {MAX_MACROS_PER_STAGE})", "macros")
        for name, value in cmd.macros:
            if len(name) > MAX_MACRO_NAME or len(value) > MAX_MACRO_VALUE:
                raise LimitExceeded(f"macro name of {len(name)} or value of {len(value)} characters (at most "
                                    f"{MAX_MACRO_NAME} and {MAX_MACRO_VALUE})", "macro_size")
        conn = self.conn
        macros = conn.macros
        if cmd.stage == b"M":
            for name in MESSAGE_MACROS:
                if name in macros:
                    conn.macro_bytes -= len(name) + len(macros.pop(name))
        for name, value in cmd.macros:
            name = name.strip("{}")
            old = macros.get(name)
            conn.macro_bytes += len(value) - len(old) if old is not None else len(name) + len(value)
            macros[name] = value
        if len(macros) > MAX_MACROS or conn.macro_bytes > MAX_MACRO_BYTES:
            raise LimitExceeded(f"{len(macros)} macros of {conn.macro_bytes} characters kept (at most {MAX_MACROS} "
                                f"of {MAX_MACRO_BYTES})", "macros")
        return []

    def _on_connect(self, cmd: Connect) -> list[Response]:
        self.conn = Connection(hostname=cmd.hostname, macros=self.conn.macros, macro_bytes=self.conn.macro_bytes,
                               port=cmd.port)
        self.tx = Transaction()
        if cmd.family == "4":
            self.conn.ip = cmd.address
        elif cmd.family == "6":
            address = cmd.address
            self.conn.ip = address[5:] if address[:5].lower() == "ipv6:" else address
        return self._reply(_NR_CONN)

    def _on_helo(self, cmd: Helo) -> list[Response]:
        self.conn.helo = cmd.name
        self.tx = Transaction()
        return self._reply(_NR_HELO)

    def _on_unknown(self, cmd: Unknown) -> list[Response]:
        verb, _, arg = cmd.command.strip().partition(" ")
        if verb.upper() == "ID" and arg.strip():
            self.conn.declared_id = arg.strip()
        return self._reply(_NR_UNKN)

    def _on_quit(self, cmd: Quit) -> list[Response]:
        self.closed = True
        return []

    def _on_quit_nc(self, cmd: QuitNoClose) -> list[Response]:
        self.conn, self.tx = Connection(), Transaction()  # negotiated options stay
        return []

    # -- message ------------------------------------------------------------------------
    def _on_abort(self, cmd: Abort) -> list[Response]:
        self.tx = Transaction()
        return []

    def _on_mail(self, cmd: Mail) -> Reaction:
        self.tx = Transaction(sender=_address(cmd.args[0]))
        if self.conn.ip is None or self.options.decide_at != "MAIL":
            return [CONTINUE]
        return self._mail_decided()

    async def _mail_decided(self) -> list[Response]:
        self.tx.decision = await self._decided(self._envelope())
        return [replies.envelope_verdict(self.tx.decision)]

    def _on_rcpt(self, cmd: Rcpt) -> Reaction:
        """:raises LimitExceeded: past the recipients' bound"""
        rcpt = _address(cmd.args[0])
        tx = self.tx
        if len(tx.rcpts) >= MAX_RCPTS or tx.rcpt_bytes + len(rcpt) > MAX_RCPT_BYTES:
            raise LimitExceeded(f"RCPT past {len(tx.rcpts)} recipients of {tx.rcpt_bytes} characters in one message "
                                f"(at most {MAX_RCPTS} of {MAX_RCPT_BYTES})", "rcpts")
        tx.rcpts.append(rcpt)
        tx.rcpt_bytes += len(rcpt)
        if self.conn.ip is None:
            return [CONTINUE]
        rclass = self.decider.recipient_class(rcpt)
        if self.tx.decision is None:
            return self._first_rcpt_decided(rcpt, rclass)
        # thresholds (or a skip) of its own, or the first's were
        if (rclass or self.tx.decision_class) and rclass != self.tx.decision_class:
            return self._rcpt_decided(rcpt, rclass)
        return [CONTINUE]

    async def _first_rcpt_decided(self, rcpt: str, rclass: str) -> list[Response]:
        self.tx.decision = await self._decided(self._envelope(rcpts=(rcpt,)))
        self.tx.decision_class = rclass
        return [replies.envelope_verdict(self.tx.decision)]

    async def _rcpt_decided(self, rcpt: str, rclass: str) -> list[Response]:
        decision = await self._decided(self._envelope(rcpts=(rcpt,)))
        if decision.action in (Action.REJECT, Action.TEMPFAIL):
            self.tx.rcpt_bytes -= len(self.tx.rcpts.pop())
            return [replies.reply_code(decision)]
        if not rclass:  # the first recipient's own decision (a skip) does not speak for the others
            self.tx.decision, self.tx.decision_class = decision, ""
        return [CONTINUE]

    def _on_data(self, cmd: Data) -> list[Response]:
        return self._reply(_NR_DATA)

    def _on_header(self, cmd: HeaderField) -> list[Response]:
        tx = self.tx
        # raw, as DKIM hashes it: without HDR_LEADSPC the MTA ate one space after the colon,
        # never a tab (Postfix milter8.c, Sendmail); a value that had none cannot be told apart
        value = cmd.value
        if not self._protocol_bits & _HDR_LEADSPC and not value.startswith("\t"):
            value = " " + value
        key = cmd.name.lower()
        counted = key in tx.seen
        if not counted and len(tx.seen) < MAX_HEADER_NAMES and tx.seen_bytes + len(key) <= MAX_HEADER_NAME_BYTES:
            tx.seen_bytes += len(key)
            counted = True
        if counted:
            tx.seen[key] = tx.seen.get(key, 0) + 1
        if self.decider.forged_header(cmd.name, value):
            if counted and len(tx.forged) < MAX_FORGED:
                tx.forged.append((cmd.name, tx.seen[key]))
            else:
                self.counts[("forged_headers_kept", self.front)] += 1
        size = len(cmd.name) + len(value)
        if len(tx.headers) < MAX_HEADERS and tx.header_bytes + size <= MAX_HEADER_BYTES:
            tx.headers.append((cmd.name, value))
            tx.header_bytes += size
        else:
            tx.headers_complete = False
        return self._reply(_NR_HDR)

    def _on_eoh(self, cmd: EndOfHeaders) -> list[Response]:
        tx = self.tx
        if self.conn.ip is not None and (tx.decision is None or tx.decision.action is Action.CONTINUE):
            tx.content_due = True
            tx.sink = self.decider.body_digest(tuple(tx.headers))
        return self._reply(_NR_EOH)

    def _on_body(self, cmd: Body) -> list[Response]:
        sink = self.tx.sink
        if sink is not None:
            sink.update(cmd.chunk)
            return self._reply(_NR_BODY)
        # no decision reads this body (none is due, or no signature needs it): SKIP the rest
        bits = self._protocol_bits
        return [] if bits & _NR_BODY else [SKIP] if bits & _SKIP else [CONTINUE]

    def _on_eom(self, cmd: EndOfMessage) -> Reaction:
        tx, self.tx = self.tx, Transaction()
        if cmd.chunk and tx.sink is not None:
            tx.sink.update(cmd.chunk)
        if self.conn.ip is None:
            return [*self._deletions(tx), CONTINUE]
        decision = tx.decision
        if decision is None or decision.action is Action.CONTINUE:  # ask again, with the content
            return self._eom_decided(tx)
        return self._end_of_message(tx, decision)

    async def _eom_decided(self, tx: Transaction) -> list[Response]:
        if self._protocol_bits & _NOBODY:
            tx.sink = BODY_NOT_SENT
        elif not tx.content_due:  # no end of headers came (or no header): the sink is asked now
            tx.sink = self.decider.body_digest(tuple(tx.headers))
        self._progress_at = self._now + self.options.progress_interval
        try:
            decision = await self._decided(self._envelope(tx, body=tx.sink if tx.sink is not None else b""))
        finally:
            self._progress_at = None
        return self._end_of_message(tx, decision)

    def _end_of_message(self, tx: Transaction, decision: Decision) -> list[Response]:
        """The modifications and the verdict at end of message, for ``decision``."""
        out = replies.end_of_message(decision, bool(self.actions & _ADDHDRS),
                                     self.options.quarantine if self.actions & _QUARANTINE else "",
                                     bool(self._protocol_bits & _HDR_LEADSPC))
        if decision.action in (Action.REJECT, Action.TEMPFAIL, Action.DISCARD):
            return out
        return [*self._deletions(tx), *out]

    def _deletions(self, tx: Transaction) -> list[Response]:
        """The CHGHEADERs deleting the message's forged headers. The highest index of a name
        goes first: an MTA that renumbers after a deletion (Sendmail skips deleted headers
        when it counts) still finds the others where they were."""
        if not tx.forged:
            return []
        if not self.actions & _CHGHDRS:
            self.counts[("forged_headers_kept", self.front)] += len(tx.forged)
            if not self._warned_chghdrs:
                self._warned_chghdrs = True
                log.warning("the MTA did not grant header changes (SMFIF_CHGHDRS): forged %s headers are "
                            "delivered", ", ".join(sorted({name for name, _ in tx.forged})))
            return []
        self.counts[("forged_headers_removed", self.front)] += len(tx.forged)
        return [ChangeHeader(index, name, "") for name, index in sorted(tx.forged, key=lambda f: -f[1])]

    # -- helpers ------------------------------------------------------------------------
    def _envelope(self, tx: Transaction | None = None, rcpts: tuple[str, ...] | None = None,
                  body: bytes | BodySink | None = None) -> Envelope:
        """The transaction as the engine sees it; ``body`` (and the headers) only at end of
        message."""
        tx = tx or self.tx
        return Envelope(ip=self.conn.ip, id=self.conn.declared_id, helo=self.conn.helo, sender=tx.sender,
                        rcpts=rcpts if rcpts is not None else tuple(tx.rcpts),
                        headers=tuple(tx.headers) if body is not None else (), body=body,
                        headers_complete=tx.headers_complete,
                        authenticated=self.conn.macros.get("auth_authen") or None)

    async def _decided(self, env: Envelope) -> Decision:
        return await timed_decide(self.decider, env, self.front, self.conn.macros.get("i", ""),
                                  client_port=self.conn.port or None)


#: each command's handler (a table of the class's functions: no bound methods per connection)
_HANDLERS: dict[type, Callable[[MilterSession, Any], Reaction]] = {
    OptNeg: MilterSession._on_optneg, Macro: MilterSession._on_macro, Connect: MilterSession._on_connect,
    Helo: MilterSession._on_helo, Mail: MilterSession._on_mail, Rcpt: MilterSession._on_rcpt,
    Data: MilterSession._on_data, HeaderField: MilterSession._on_header, EndOfHeaders: MilterSession._on_eoh,
    Body: MilterSession._on_body, EndOfMessage: MilterSession._on_eom, Unknown: MilterSession._on_unknown,
    Abort: MilterSession._on_abort, Quit: MilterSession._on_quit, QuitNoClose: MilterSession._on_quit_nc,
}


def _address(arg: str) -> str:
    """The address of a MAIL/RCPT argument, with or without <> (the null sender is "")."""
    return arg.strip().removeprefix("<").removesuffix(">")
