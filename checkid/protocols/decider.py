"""The seam between the front-ends and the engine: the :class:`Decider` a front-end calls,
and :func:`timed_decide`, the one call every session makes (decide, then one log line with
the latency, the same for every front-end). This module does no I/O besides that log line.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from checkid.engine.decision import BodySink, Decision, Envelope
from checkid.engine.trace import Trace

log = logging.getLogger("checkid.decision")


class Decider(Protocol):
    """All a front-end may ask of the engine (:class:`checkid.engine.engine.Engine` is one)."""

    async def decide(self, envelope: Envelope, trace: Trace | None = None,
                     frontend: str = "inprocess") -> Decision:
        """Decide one transaction; never raises for bad input. ``frontend`` labels metrics."""
        ...

    def recipient_class(self, rcpt: str) -> str:
        """The class of ``rcpt`` ("" for most): recipients of one class share a decision."""
        ...

    def forged_header(self, name: str, value: str) -> bool:
        """Whether a header field of an incoming message must be removed before delivery
        (an ``Authent:``, or an ``Authentication-Results`` naming this site)."""
        ...

    def body_digest(self, headers: tuple[tuple[str, str], ...]) -> BodySink | None:
        """For a message whose end-of-data decision is due (the MAIL-time one said CONTINUE):
        where to stream its body, given its headers; pass the sink as the envelope's body.
        None when the body is not needed."""
        ...


async def timed_decide(decider: Decider, envelope: Envelope, front: str, queue_id: str = "",
                       clock: Callable[[], float] = time.perf_counter) -> Decision:
    """``decider.decide(envelope)``, logged as one ``checkid.decision`` line with its latency.

    :param front: the front-end's name, for the metrics and the log line
    :param queue_id: the MTA's queue id when it sent one ("" otherwise)
    """
    start = clock()
    decision = await decider.decide(envelope, frontend=front)
    if log.isEnabledFor(logging.INFO):
        log.info("%s queue_id=%s ip=%s id=%s helo=%s from=<%s> identity=%s identity_from=%s action=%s code=%s %s "
                 "stage=%s latency_ms=%.2f",
                 front, queue_id or "-", envelope.ip, envelope.id or "-", envelope.helo or "-",
                 envelope.sender or "", decision.identity or "-", decision.identity_source or "-",
                 decision.action.value, decision.code, decision.xcode or "-", decision.stage,
                 (clock() - start) * 1000)
    return decision
