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
from collections.abc import Callable, Coroutine
from typing import Any
from dataclasses import dataclass

from checkid.engine.decision import Decision, Envelope
from checkid.errors import ProtocolError
from checkid.protocols import eager
from checkid.protocols.decisionlog import log_decision
from checkid.protocols.postfix_policy.codec import Request
from checkid.protocols.postfix_policy.replies import ReplyOptions, render

STATES = ("CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN")


@dataclass(frozen=True, slots=True)
class PolicyOptions:
    #: the protocol_state at which checkid decides; other states get DUNNO
    decide_at: str = "RCPT"
    replies: ReplyOptions = ReplyOptions()


def envelope(request: Request) -> Envelope:
    """The engine's view of a policy request (no ID: the HELO name is the fallback)."""
    rcpt = request.get("recipient", "")
    return Envelope(
        ip=request.get("client_address") or None,
        id=None,
        helo=request.get("helo_name") or None,
        sender=request.get("sender", ""),
        rcpts=(rcpt,) if rcpt else (),
    )


class PolicySession:
    """Answers the requests of one connection, in the order given to :meth:`answer`."""

    def __init__(self, decide: Callable[[Envelope], Coroutine[Any, Any, Decision]], options: PolicyOptions,
                 clock: Callable[[], float], front: str = "policy",
                 recipient_class: Callable[[str], str] = lambda rcpt: "") -> None:
        self._decide = decide
        self.options = options
        self._clock = clock
        self._front = front
        self._class = recipient_class
        self._instance: str | None = None
        #: this instance's decisions by recipient class
        self._decisions: dict[str, asyncio.Future[Decision]] = {}
        #: the instance whose header has been prepended
        self._prepended: str | None = None

    async def answer(self, request: Request) -> str:
        """The action for one request. :raises ProtocolError: when it is not a policy request"""
        if request.get("request") != "smtpd_access_policy":
            raise ProtocolError(f"not a policy request: request={request.get('request', '')!r}")
        if request.get("protocol_state", "").upper() != self.options.decide_at:
            return "DUNNO"
        instance = request.get("instance", "")
        if not instance or instance != self._instance:
            self._instance, self._decisions = instance or None, {}
        rclass = self._class(request.get("recipient", ""))
        pending = self._decisions.get(rclass) if instance else None
        if pending is None:
            env = envelope(request)
            start = self._clock()
            pending = eager.start(self._decide(env))
            self._decisions[rclass] = pending
            decision = await pending
            log_decision(self._front, request.get("queue_id", ""), env, decision, self._clock() - start)
        else:
            decision = await pending
        action = render(decision, self.options.replies)
        if action.startswith("PREPEND ") and instance:
            if self._prepended == instance:
                return "DUNNO"
            self._prepended = instance
        return action
