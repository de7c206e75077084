"""One log line per decision, the same for every front-end."""
from __future__ import annotations

import logging

from checkid.engine.decision import Decision, Envelope

log = logging.getLogger("checkid.decision")


def log_decision(front: str, queue_id: str, env: Envelope, decision: Decision, seconds: float) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("%s queue_id=%s ip=%s id=%s helo=%s from=<%s> action=%s code=%s %s stage=%s latency_ms=%.2f",
                 front, queue_id or "-", env.ip, env.id or "-", env.helo or "-", env.sender or "",
                 decision.action.value, decision.code, decision.xcode or "-", decision.stage, seconds * 1000)
