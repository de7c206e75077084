"""One front-door SMTP session: client events to decisions and to the backend, replies back.

State table (the invariants, h11's "Rule 1"): every transition is in :data:`VERBS` and the
handlers below; nothing else changes :attr:`SmtpSession.state`.

========  ===========================================  =====================================
state     meaning                                      left by
========  ===========================================  =====================================
GREETED   banner sent, no HELO/EHLO yet                HELO/EHLO -> READY
READY     greeted, no transaction                      MAIL (accepted) -> MAIL
MAIL      sender accepted, no recipient yet            RCPT (accepted) -> RCPT; RSET -> READY
RCPT      at least one recipient accepted              DATA (354) -> DATA; RSET -> READY
DATA      content flows (the codec is in DATA mode)    end of data -> READY
TLS       STARTTLS answered 220, the handshake is due  :meth:`~SmtpSession.tls_started` -> GREETED
CLOSED    QUIT answered or a 421 sent                  (the connection ends)
========  ===========================================  =====================================

Connection state (:class:`Connection`: address, HELO name, declared ID, counters) lives for
the session; transaction state (:class:`Transaction`: sender, recipients, decision) is reset by
RSET, HELO/EHLO and the end of data. After STARTTLS (RFC 3207 §4.2) the session starts over
at GREETED with everything the client said before forgotten (HELO name, declared ID); only
the address and the error and command counts stay, so a new TLS session cannot reset the
limits. The ``ID`` command is consumed here and never reaches
the backend. The backend is a :class:`Backend` (``relay.py`` over a socket, a fake in tests):
this module does no I/O; time comes in as ``now``, wall time for ``Received:`` as ``wall``.

Decisions: at MAIL (IP, ID, HELO, sender), before the MAIL goes to the backend; at RCPT for
recipients with their own thresholds, before the RCPT goes; at end of data when MAIL said
CONTINUE, with the headers and the body, before the final dot. A refusal at end of
data, a DISCARD and a content error abort the backend connection without the final dot
(nothing queued; reference/front-door.md §1.1); the next transaction opens a new one. While
an end-of-data decision is due, content is held (up to ``hold``) so that its headers can still
be prepended; a longer message streams, and that decision's headers are logged, not added.

Every message's content passes a :class:`~checkid.protocols.smtp.headerfilter.HeaderFilter`
on its way to the backend: the header fields :meth:`Decider.forged_header` calls forged
never reach it, whether the message is held or streams. When an end-of-data decision is due,
the body is streamed, as it arrives, into the sink :meth:`Decider.body_digest` gives at the
end of the header section; only the header fields are kept (bounded) for the decision.

Counted in ``counts`` (the server's :class:`~checkid.protocols.base.ServerState` counters):
``("smtp_sessions",)``, ``("smtp_transactions", outcome)`` once per MAIL (relayed, rejected,
tempfailed, discarded, aborted), ``("smtp_relay_errors", kind)``, ``("smtp_relayed_bytes",)``
and ``("forged_headers_removed", front)``.
"""
from __future__ import annotations

import enum
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from checkid.engine import validate
from checkid.engine.decision import Action, BodySink, Decision, Envelope
from checkid.errors import CheckidError
from checkid.protocols.decider import Decider, timed_decide
from checkid.protocols.smtp import replies
from checkid.protocols.smtp.backend import Backend, BackendClient, BackendError
from checkid.protocols.smtp.codec import MAX_MESSAGE, BareLf, dot_stuff, encode_command
from checkid.protocols.smtp.events import (BadLine, ClientEvent, Command, DataChunk, DataError, EndOfData,
                                           Reply)
from checkid.protocols.smtp.headerfilter import HeaderFilter

log = logging.getLogger(__name__)

#: EHLO keywords relayed from the backend when it offers them; any other is dropped (never
#: CHUNKING: no BDAT here; never the backend's STARTTLS: TLS to the client is ours)
RELAYED_KEYWORDS = ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8")
#: the ``ID`` extension's keyword (DESIGN.md: the MTA function this front door exists for)
ID_KEYWORD = "ID"
_QUEUE_ID = re.compile(r"queued as ([0-9A-Za-z]+)")
_PATH = re.compile(r"(?i)(FROM|TO):\s*<([^<>]*)>(.*)\Z")


class State(enum.Enum):
    #: banner sent, no HELO/EHLO yet
    GREETED = "greeted"
    #: greeted, no transaction
    READY = "ready"
    #: sender accepted, no recipient yet
    MAIL = "mail"
    #: at least one recipient accepted
    RCPT = "rcpt"
    #: message content flows
    DATA = "data"
    #: STARTTLS answered 220: nothing is read until the TLS handshake is done
    TLS = "tls"
    #: QUIT answered or a 421 sent
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SmtpOptions:
    #: the front door's name in its banner, EHLO reply and ``Received:``
    hostname: str = "localhost"
    #: RFC 5321 §4.5.3.1.8: a server must take at least 100 recipients
    max_rcpts: int = 100
    #: errors (unknown commands, bad syntax, bad lines) before a 421 (Postfix smtpd_hard_error_limit)
    max_errors: int = 20
    #: commands per session before a 421
    max_commands: int = 1000
    #: the message size bound, also advertised with SIZE (the backend's, when smaller)
    max_message: int = MAX_MESSAGE
    #: content held while an end-of-data decision is due, and what that decision is shown
    hold: int = 1024 * 1024
    #: a bare CR or LF in content: made CRLF, or the message refused
    bare_lf: BareLf = "normalize"
    #: how the backend learns the client: XCLIENT, PROXY, or checkid's ``Received:`` only
    backend_client: BackendClient = "xclient"
    #: STARTTLS offered (the server holds a certificate)
    starttls: bool = False


@dataclass
class Connection:
    #: client address; None when unknown (a unix-socket client): nothing is decided
    ip: str | None = None
    helo: str | None = None
    #: greeted with EHLO (the ID extension exists only then)
    esmtp: bool = False
    declared_id: str | None = None
    commands: int = 0
    errors: int = 0
    #: the session runs over TLS (after STARTTLS)
    tls: bool = False


@dataclass
class Transaction:
    #: a MAIL was taken up (not yet counted in ``smtp_transactions``)
    open: bool = False
    sender: str = ""
    rcpts: list[str] = field(default_factory=list)
    #: the decision at MAIL (None: none made, e.g. no client address)
    decision: Decision | None = None
    #: DISCARD at MAIL: nothing goes to the backend, everything is answered 250
    discard: bool = False
    #: content held for an end-of-data decision (None: streaming)
    held: bytearray | None = None
    #: the content's forged header fields taken out, and its fields collected (from DATA on)
    filter: HeaderFilter | None = None
    #: forged fields of this message counted so far
    removed: int = 0
    #: the body sink was asked for (at the end of the header section, when a decision is due)
    digest_asked: bool = False
    #: where the body goes for the end-of-data decision (None: not wanted)
    sink: BodySink | None = None
    #: a content error: the message is refused at its end
    error: str = ""


class SmtpSession:
    """One client session (the codec and the socket are the server's)."""

    def __init__(self, decider: Decider, backend: Backend, options: SmtpOptions, ip: str | None,
                 front: str = "smtp", wall: Callable[[], float] = time.time,
                 counts: Counter[tuple[str, ...]] | None = None) -> None:
        self.decider = decider
        self.backend = backend
        self.options = options
        self.front = front
        self.wall = wall
        self.counts: Counter[tuple[str, ...]] = Counter() if counts is None else counts
        self.conn = Connection(ip=ip)
        self.tx = Transaction()
        self.state = State.GREETED
        #: (verb -> handler, states where it is legal); out of state -> the handler's own 503
        self.verbs: dict[str, tuple[Callable[[Command], Awaitable[list[Reply]]], frozenset[State]]] = {
            "EHLO": (self._on_ehlo, _ANY), "HELO": (self._on_helo, _ANY),
            "ID": (self._on_id, frozenset({State.READY})),
            "MAIL": (self._on_mail, frozenset({State.READY})),
            "RCPT": (self._on_rcpt, frozenset({State.MAIL, State.RCPT})),
            "DATA": (self._on_data, frozenset({State.RCPT})),
            "RSET": (self._on_rset, _ANY), "NOOP": (self._on_noop, _ANY), "QUIT": (self._on_quit, _ANY),
            "VRFY": (self._on_vrfy, _ANY), "HELP": (self._on_help, _ANY),
            "STARTTLS": (self._on_starttls, frozenset({State.GREETED, State.READY})),
        }

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def in_transaction(self) -> bool:
        return self.state in (State.MAIL, State.RCPT, State.DATA)

    async def open(self) -> list[Reply]:
        """The greeting: the banner once the backend's connection is open, else 421 and the
        end. The backend's own greeting is waited for at HELO/EHLO; if it fails, that gets
        the 421."""
        try:
            await self.backend.open()
        except BackendError as e:
            return self._backend_down(e)
        self.counts[("smtp_sessions",)] += 1
        return [replies.banner(self.options.hostname)]

    def _backend_down(self, error: BackendError) -> list[Reply]:
        log.warning("backend unreachable for %s: %s", self.conn.ip, error)
        self.counts[("smtp_relay_errors", error.kind)] += 1
        return self._close(replies.BACKEND_DOWN)

    def tls_started(self) -> None:
        """The TLS handshake after STARTTLS completed: back to the greeting, forgetting what
        the client said before it (RFC 3207 §4.2)."""
        if self.state is not State.TLS:
            raise CheckidError(f"TLS started in state {self.state.value}")
        self.conn = Connection(ip=self.conn.ip, commands=self.conn.commands, errors=self.conn.errors, tls=True)
        self.tx = Transaction()
        self.state = State.GREETED

    def lost(self) -> None:
        """The client is gone (or the server closed): a transaction in progress is aborted."""
        self._end_transaction("aborted")
        self.state = State.CLOSED

    async def handle(self, event: ClientEvent, now: float = 0.0) -> list[Reply]:
        """The replies to one event (none for content)."""
        if self.closed:
            return []
        if isinstance(event, DataChunk):
            self._content(event.data)
            return []
        if isinstance(event, DataError):
            self._content_error(event.reason)
            return []
        if isinstance(event, EndOfData):
            return await self._end_of_data()
        self.conn.commands += 1
        if self.conn.commands > self.options.max_commands:
            return self._close(replies.TOO_MANY_COMMANDS)
        if isinstance(event, BadLine):
            return self._error(_BAD_LINES[event.reason])
        entry = self.verbs.get(event.verb)
        if entry is None:
            return self._error(replies.NOT_IMPLEMENTED if event.verb in replies.UNIMPLEMENTED
                               else replies.UNKNOWN)
        handler, states = entry
        if self.state not in states:
            return self._error(self._out_of_sequence(event.verb))
        try:
            return await handler(event)
        except BackendError as e:
            return self._backend_lost(e)

    # -- connection ---------------------------------------------------------------------
    async def _on_ehlo(self, cmd: Command) -> list[Reply]:
        return await self._greet(cmd, esmtp=True)

    async def _on_helo(self, cmd: Command) -> list[Reply]:
        return await self._greet(cmd, esmtp=False)

    async def _greet(self, cmd: Command, esmtp: bool) -> list[Reply]:
        helo = cmd.arg.strip()
        if not helo or " " in helo:
            return self._error(replies.HELO_SYNTAX)
        if self.state is State.DATA:
            return self._error(replies.BAD_SEQUENCE)
        try:
            await self.backend.ready()
        except BackendError as e:
            return self._backend_down(e)
        reply = await self._backend_hello(helo, esmtp)
        if not reply.positive:
            return [reply]
        self._end_transaction("aborted")
        self.conn.helo, self.conn.esmtp = helo, esmtp
        if not esmtp:
            self.conn.declared_id = None  # the ID extension does not exist without EHLO
        self.state = State.READY
        if not esmtp:
            return [Reply(250, (self.options.hostname,))]
        return [replies.ehlo(self.options.hostname, helo, self._keywords())]

    async def _backend_hello(self, helo: str, esmtp: bool) -> Reply:
        if not self.backend.connected:
            await self.backend.connect()
        return await self.backend.hello(helo, esmtp)

    def _keywords(self) -> list[str]:
        offered = self.backend.extensions
        out = []
        for keyword in RELAYED_KEYWORDS:
            if keyword not in offered:
                continue
            if keyword == "SIZE":
                limit = offered["SIZE"]
                size = min(int(limit), self.options.max_message) if limit.isdigit() and int(limit) else \
                    self.options.max_message
                out.append(f"SIZE {size}")
            else:
                out.append(keyword)
        if self.options.starttls and not self.conn.tls:  # RFC 3207 §4.2: not offered again over TLS
            out.append("STARTTLS")
        out.append(ID_KEYWORD)
        return out

    async def _on_id(self, cmd: Command) -> list[Reply]:
        if not self.conn.esmtp:
            return self._error(replies.ID_SEQUENCE)
        name = validate.domain(cmd.arg.strip()) if cmd.arg.strip() and " " not in cmd.arg.strip() else None
        if name is None:
            return self._error(replies.BAD_ID)
        self.conn.declared_id = name
        return [replies.ID_OK]

    async def _on_noop(self, cmd: Command) -> list[Reply]:
        return [replies.OK]

    async def _on_vrfy(self, cmd: Command) -> list[Reply]:
        return [replies.VRFY]

    async def _on_help(self, cmd: Command) -> list[Reply]:
        return [replies.HELP]

    async def _on_starttls(self, cmd: Command) -> list[Reply]:
        if not self.options.starttls:
            return self._error(replies.NOT_IMPLEMENTED)
        if self.conn.tls:
            return self._error(replies.TLS_ACTIVE)
        if cmd.arg.strip():
            return self._error(replies.STARTTLS_SYNTAX)
        self.state = State.TLS
        return [replies.READY_FOR_TLS]

    async def _on_quit(self, cmd: Command) -> list[Reply]:
        self._end_transaction("aborted")
        self.backend.quit()
        self.state = State.CLOSED
        return [replies.BYE]

    async def _on_rset(self, cmd: Command) -> list[Reply]:
        if cmd.arg.strip():
            return self._error(replies.NO_ARGUMENT)
        had_backend_tx = self.state in (State.MAIL, State.RCPT) and not self.tx.discard
        self._end_transaction("aborted")
        if had_backend_tx and self.backend.connected:
            reply = await self.backend.command(encode_command("RSET"))
            if not reply.positive:
                return [reply]
        return [replies.OK]

    # -- transaction ----------------------------------------------------------------------
    async def _on_mail(self, cmd: Command) -> list[Reply]:
        path = _PATH.match(cmd.arg)
        if path is None or path.group(1).upper() != "FROM":
            return self._error(replies.MAIL_SYNTAX)
        too_big = _declared_size(path.group(3)) > self.options.max_message
        if too_big:  # RFC 1870 §6.1: refused at MAIL, before anything is relayed
            return [replies.TOO_BIG]
        self.tx = Transaction(open=True, sender=path.group(2))
        if self.conn.ip is not None:
            decision = await self._decided(self._envelope())
            self.tx.decision = decision
            if decision.action in (Action.REJECT, Action.TEMPFAIL):
                self._end_transaction("rejected" if decision.action is Action.REJECT else "tempfailed")
                return [replies.for_decision(decision)]
            if decision.action is Action.DISCARD:
                self.tx.discard = True
                self.state = State.MAIL
                return [replies.SENDER_OK]
        if not self.backend.connected:  # aborted after the last message: a new connection
            await self.backend.connect()
            if self.conn.helo:
                greeted = await self.backend.hello(self.conn.helo, self.conn.esmtp)
                if not greeted.positive:  # no MAIL on a half-greeted connection
                    self._end_transaction(_refused(greeted))
                    return [greeted]
        reply = await self.backend.command(encode_command("MAIL", cmd.arg))
        if reply.positive:
            self.state = State.MAIL
        else:
            self._end_transaction(_refused(reply))
        return [reply]

    async def _on_rcpt(self, cmd: Command) -> list[Reply]:
        path = _PATH.match(cmd.arg)
        if path is None or path.group(1).upper() != "TO" or not path.group(2):
            return self._error(replies.RCPT_SYNTAX)
        rcpt = path.group(2)
        if len(self.tx.rcpts) >= self.options.max_rcpts:
            return [replies.TOO_MANY_RCPTS]
        if self.conn.ip is not None and not self.tx.discard and self.decider.recipient_class(rcpt):
            decision = await self._decided(self._envelope(rcpts=(rcpt,)))
            if decision.action in (Action.REJECT, Action.TEMPFAIL):
                return [replies.for_decision(decision)]
        if self.tx.discard:
            reply = replies.RCPT_OK
        else:
            reply = await self.backend.command(encode_command("RCPT", cmd.arg))
        if reply.positive:
            self.tx.rcpts.append(rcpt)
            self.state = State.RCPT
        return [reply]

    async def _on_data(self, cmd: Command) -> list[Reply]:
        if cmd.arg.strip():
            return self._error(replies.NO_ARGUMENT)
        if self.tx.discard:
            self.state = State.DATA
            return [replies.START_DATA]
        reply = await self.backend.command(encode_command("DATA"))
        if reply.code != 354:
            return [reply]
        self.state = State.DATA
        self.tx.filter = HeaderFilter(self.decider.forged_header)
        decision = self.tx.decision
        if decision is not None and decision.action is Action.CONTINUE:
            self.tx.held = bytearray()
        else:
            self._prepend(decision)
        return [reply]

    def _prepend(self, decision: Decision | None) -> None:
        received = ""
        if self.options.backend_client == "none":
            received = replies.received(self.conn.helo, self.conn.ip, self.options.hostname, self.wall())
        block = replies.header_block(decision, received)
        if block:
            self._relay(block)

    def _relay(self, wire: bytes) -> None:
        self.counts[("smtp_relayed_bytes",)] += len(wire)
        self.backend.send(wire)

    def _content(self, data: bytes) -> None:
        tx = self.tx
        if self.state is not State.DATA or tx.error or tx.discard or tx.filter is None:
            return
        self._filtered(tx, tx.filter, *tx.filter.feed(data))

    def _filtered(self, tx: Transaction, filtered: HeaderFilter, head: bytes, body: bytes) -> None:
        """Content past the header filter: counted, the body to the sink, all to the backend."""
        if filtered.removed > tx.removed:
            self.counts[("forged_headers_removed", self.front)] += filtered.removed - tx.removed
            tx.removed = filtered.removed
        if filtered.in_body and not tx.digest_asked and _decision_due(tx):
            tx.digest_asked = True
            tx.sink = self.decider.body_digest(tuple(filtered.headers))
        if body and tx.sink is not None:
            tx.sink.update(body)
        data = head + body if head else body
        if data:
            self._relay_content(tx, data)

    def _relay_content(self, tx: Transaction, data: bytes) -> None:
        if tx.held is not None:
            tx.held += data
            if len(tx.held) <= self.options.hold:
                return
            self._prepend(None)  # too long to hold: what the end-of-data decision adds is lost
            data, tx.held = bytes(tx.held), None
        self._relay(dot_stuff(data))

    def _content_error(self, reason: str) -> None:
        if self.state is State.DATA and not self.tx.error:
            self.tx.error = reason
            if not self.tx.discard:
                self.backend.abort()  # nothing of this message may be queued

    async def _end_of_data(self) -> list[Reply]:
        if self.state is not State.DATA:
            return []
        tx = self.tx
        self._end_transaction(None)
        if tx.error:
            self._log(tx, "refused", tx.error)
            self._count("rejected")
            return [replies.DATA_ERRORS[tx.error]]
        if tx.discard:
            self._log(tx, "discarded")
            self._count("discarded")
            return [replies.QUEUED_NOWHERE]
        headers: tuple[tuple[str, str], ...] = ()
        complete = True
        if tx.filter is not None:  # set at DATA's 354
            self._filtered(tx, tx.filter, *tx.filter.end())
            headers, complete = tuple(tx.filter.headers), tx.filter.complete
        decision = tx.decision
        if decision is not None and decision.action is Action.CONTINUE:
            if not tx.digest_asked:  # all header, no body: the sink is asked now
                tx.sink = self.decider.body_digest(headers)
            decision = await self._decided(replace(self._envelope(tx, headers=headers,
                                                                  body=tx.sink if tx.sink is not None else b""),
                                                   headers_complete=complete))
            if decision.action in (Action.REJECT, Action.TEMPFAIL, Action.DISCARD):
                self.backend.abort()
                self._log(tx, decision.action.value.lower())
                self._count(_OUTCOMES[decision.action])
                return [replies.QUEUED_NOWHERE if decision.action is Action.DISCARD
                        else replies.for_decision(decision)]
            if tx.held is not None:
                self._prepend(decision)
                self._relay(dot_stuff(bytes(tx.held)))
            elif decision.headers:
                log.info("%s: message streamed before the end-of-data decision; headers not added: %s",
                         self.conn.ip, ", ".join(h.label for h in decision.headers))
        try:
            reply = await self.backend.end_data()
        except BackendError as e:
            self._log(tx, "backend lost")
            self._count("tempfailed")
            return self._backend_lost(e)
        self._log(tx, "relayed", reply=reply)
        self._count("relayed" if reply.positive else _refused(reply))
        return [reply]

    # -- helpers ------------------------------------------------------------------------
    def _end_transaction(self, outcome: str | None) -> None:
        """Forget the transaction; one taken up and not yet counted counts as ``outcome``."""
        if self.tx.open and outcome is not None:
            self._count(outcome)
        self.tx = Transaction()
        if self.state is not State.GREETED:
            self.state = State.READY

    def _count(self, outcome: str) -> None:
        self.counts[("smtp_transactions", outcome)] += 1

    def _out_of_sequence(self, verb: str) -> Reply:
        if self.state is State.GREETED and verb in ("MAIL", "RCPT", "DATA", "ID"):
            return replies.ID_SEQUENCE if verb == "ID" else replies.NEED_HELO
        if verb == "ID":
            return replies.ID_SEQUENCE
        if verb == "STARTTLS":
            return replies.TLS_IN_TRANSACTION
        if verb == "MAIL":
            return replies.NESTED_MAIL
        if verb == "RCPT":
            return replies.NEED_MAIL
        if verb == "DATA":
            return replies.NO_VALID_RCPT if self.state is State.MAIL else replies.NEED_RCPT
        return replies.BAD_SEQUENCE

    def _error(self, reply: Reply) -> list[Reply]:
        """A client error: answered, counted; past the limit the session ends."""
        self.conn.errors += 1
        if self.conn.errors >= self.options.max_errors:
            return self._close(replies.TOO_MANY_ERRORS)
        return [reply]

    def _close(self, reply: Reply) -> list[Reply]:
        self._end_transaction("aborted")
        self.state = State.CLOSED
        self.backend.abort()
        return [reply]

    def _backend_lost(self, error: BackendError) -> list[Reply]:
        """The backend went away: this transaction fails with a 451 (the client retries);
        the next MAIL opens a new connection."""
        log.warning("%s: backend lost: %s", self.conn.ip, error)
        self.counts[("smtp_relay_errors", error.kind)] += 1
        self.backend.abort()
        self._end_transaction("tempfailed")
        return [replies.BACKEND_LOST]

    def _envelope(self, tx: Transaction | None = None, rcpts: tuple[str, ...] | None = None,
                  headers: tuple[tuple[str, str], ...] = (), body: bytes | BodySink | None = None) -> Envelope:
        tx = tx or self.tx
        return Envelope(ip=self.conn.ip, id=self.conn.declared_id, helo=self.conn.helo, sender=tx.sender,
                        rcpts=rcpts if rcpts is not None else tuple(tx.rcpts), headers=headers, body=body)

    async def _decided(self, envelope: Envelope) -> Decision:
        return await timed_decide(self.decider, envelope, self.front)

    def _log(self, tx: Transaction, outcome: str, detail: str = "", reply: Reply | None = None) -> None:
        """The one line per transaction, with the backend's queue id when its reply has one."""
        queue_id = ""
        if reply is not None:
            match = _QUEUE_ID.search(reply.text)
            queue_id = match.group(1) if match and reply.positive else ""
            detail = f"{reply.code} {reply.text}"
        log.info("%s transaction ip=%s id=%s from=<%s> rcpts=%d outcome=%s queue_id=%s %s", self.front,
                 self.conn.ip, self.conn.declared_id or "-", tx.sender, len(tx.rcpts), outcome, queue_id or "-",
                 detail)


_ANY = frozenset(State) - {State.CLOSED, State.TLS}
#: a BadLine's reason -> its reply
_BAD_LINES = {"too long": replies.LINE_TOO_LONG, "bare LF": replies.BARE_LF, "bare CR": replies.BARE_CR}
#: an end-of-data decision that ends the transaction -> its ``smtp_transactions`` outcome
_OUTCOMES = {Action.REJECT: "rejected", Action.TEMPFAIL: "tempfailed", Action.DISCARD: "discarded"}
_SIZE = re.compile(r"(?i)(?:^|\s)SIZE=(\d{1,20})(?=\s|$)")


def _decision_due(tx: Transaction) -> bool:
    """Whether the transaction's decision is still to be made at end of data."""
    return tx.decision is not None and tx.decision.action is Action.CONTINUE


def _refused(reply: Reply) -> str:
    """The outcome of a transaction the backend refused with ``reply``."""
    return "tempfailed" if reply.code < 500 else "rejected"


def _declared_size(params: str) -> int:
    """The ``SIZE=`` a MAIL command declares (RFC 1870 §6), 0 when none."""
    match = _SIZE.search(params)
    return int(match.group(1)) if match else 0
