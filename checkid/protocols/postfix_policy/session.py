"""One policy connection's logic: requests to engine calls, decisions to actions.

Postfix sends one request per SMTP protocol stage; checkid decides at one stage (default
RCPT) and answers DUNNO at the others. ``instance`` ties the requests of one message: the
first request of an instance is decided and the decision remembered for the rest of that
message (a pipelined second request waits for the same decision); a new instance forgets
it. Recipients with their own reputation thresholds get their own decision. The header is
prepended once per message: a later PREPEND is answered DUNNO.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from checkid.engine.decision import Decision, Envelope
from checkid.errors import ProtocolError
from checkid.protocols import eager
from checkid.protocols.decider import Decider, timed_decide
from checkid.protocols.postfix_policy.codec import Request
from checkid.protocols.postfix_policy.replies import ReplyOptions, render

STATES = ("CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN")


@dataclass(frozen=True, slots=True)
class PolicyOptions:
    #: the protocol_state at which checkid decides; other states get DUNNO
    decide_at: str = "RCPT"
    replies: ReplyOptions = ReplyOptions()


def envelope(request: Request) -> Envelope:
    """The engine's view of a policy request (no ID: the HELO name is the fallback). A policy
    request never carries the message, not even at END-OF-MESSAGE, and no later one will:
    methods that need it are skipped (``message_follows=False``), never answered CONTINUE.
    ``sasl_username`` (set when the client logged in) is the envelope's ``authenticated``."""
    rcpt = request.get("recipient", "")
    return Envelope(
        ip=request.get("client_address") or None,
        id=None,
        helo=request.get("helo_name") or None,
        sender=request.get("sender", ""),
        rcpts=(rcpt,) if rcpt else (),
        message_follows=False,
        authenticated=request.get("sasl_username") or None,
    )


def client_port(request: Request) -> int | None:
    """The client's port (Postfix 3.2 and later send ``client_port``), None when unknown."""
    port = request.get("client_port", "")
    return int(port) if port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536 else None


class PolicySession:
    """Answers the requests of one connection, in the order given to :meth:`answer`, on the
    event loop of its first answer (a connection's: its loop is kept, not looked up again)."""

    def __init__(self, decider: Decider, options: PolicyOptions, front: str = "policy") -> None:
        self.decider = decider
        self.options = options
        self.front = front
        self._instance: str | None = None
        #: this instance's decisions by recipient class
        self._decisions: dict[str, asyncio.Future[Decision]] = {}
        #: the instance whose header has been prepended
        self._prepended: str | None = None
        #: the last decision rendered and its action: a decision is immutable, and the memo
        #: answers a repeated request with the very same one
        self._rendered: tuple[Decision | None, str] = (None, "")
        self._loop: asyncio.AbstractEventLoop | None = None

    async def answer(self, request: Request) -> str:
        """The action for one request. :raises ProtocolError: when it is not a policy request"""
        if request.get("request") != "smtpd_access_policy":
            raise ProtocolError(f"not a policy request: request={request.get('request', '')!r}")
        if request.get("protocol_state", "").upper() != self.options.decide_at:
            return "DUNNO"
        instance = request.get("instance", "")
        if not instance or instance != self._instance:
            self._instance, self._decisions = instance or None, {}
        rclass = self.decider.recipient_class(request.get("recipient", ""))
        pending = self._decisions.get(rclass) if instance else None
        if pending is None:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            pending = eager.start(timed_decide(self.decider, envelope(request), self.front,
                                               request.get("queue_id", ""), client_port=client_port(request)), loop)
            self._decisions[rclass] = pending
        decision = await pending
        last, action = self._rendered
        if decision is not last:
            action = render(decision, self.options.replies)
            self._rendered = (decision, action)
        if action.startswith("PREPEND ") and instance:
            if self._prepended == instance:
                return "DUNNO"
            self._prepended = instance
        return action
