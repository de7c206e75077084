"""The seam between the front-ends and the engine: the :class:`Decider` a front-end calls,
and :func:`timed_decide`, the one call every session makes (decide, then one log line with
the latency, the same for every front-end). This module does no I/O besides that log line.

The line (logger ``checkid.decision``) is ``FRONT key=value ...``, the same fields also as
data (``extra={"fields": ...}``, typed: numbers stay numbers) for the JSON log format:
``queue_id`` (the MTA's, when it has handed one over at that stage), ``ip``, ``id``,
``helo``, ``from``, ``identity`` and ``identity_from``, ``to`` (the recipients known at
that stage, comma-separated), ``action`` (``would_reject``, ``would_tempfail``,
``would_discard`` in report mode), ``code``, ``xcode``, ``text``, ``stage``, ``reason``,
``client_port`` and ``latency_ms``. Addresses appear as :meth:`Decider.log_address` shows them
(``[policy] log_addresses``). A value that is not one plain word is JSON-quoted with every
control character escaped, so no field a client sent (a HELO name with a line break) can
start a line of its own or pass for another field. The line is made without
:meth:`logging.Logger.info`'s caller lookup (:func:`log_decision`).

:func:`content_needed` tells a front-end what of a message a decider may read (the headers,
the body), so the milter can ask the MTA to leave the rest out.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from checkid.engine.decision import BodySink, Decision, Envelope
from checkid.engine.trace import Trace

log = logging.getLogger("checkid.decision")
_NAME = log.name

#: what a plain logged word may not hold besides control characters: whitespace (``\s`` is
#: exactly ``str.isspace``) and the characters that delimit values in the line. One regex
#: search instead of a test per character: this runs for every field of every decision
_NOT_PLAIN = re.compile(r'[\s"\\<>=,]')
#: ``json.dumps(value, ensure_ascii=False)`` without building an encoder per call
_json_string = json.JSONEncoder(ensure_ascii=False).encode


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

    def log_address(self, address: str) -> str:
        """How the decision log shows a sender or recipient address: as it is, or hashed
        (``[policy] log_addresses``)."""
        ...


class ContentNeeds(NamedTuple):
    """What of a message a decision at end of data may read: a front-end that can leave the
    rest out (the milter negotiates it away) need not receive it."""

    #: the header fields (DKIM verifies them; forged ones are removed)
    headers: bool = True
    #: the body (DKIM hashes it)
    body: bool = True


#: what a decider that does not say needs: everything
ALL_CONTENT = ContentNeeds()


class ContentAware(Protocol):
    """A :class:`Decider` that can say what of a message it may need (the engine: from its
    configuration and the serving policy)."""

    def content_needed(self) -> tuple[bool, bool]:
        """``(headers, body)``: whether a message's header fields, and its body, may be read
        by any decision (for connections made from now on)."""
        ...


def content_needed(decider: Decider) -> ContentNeeds:
    """What of a message ``decider`` may need: its own answer (:class:`ContentAware`),
    everything when it has none. Asked once per connection, not per message."""
    ask = getattr(decider, "content_needed", None)
    if ask is None:
        return ALL_CONTENT
    headers, body = ask()
    return ContentNeeds(bool(headers or body), bool(body))  # a body is not verified without its headers


async def timed_decide(decider: Decider, envelope: Envelope, front: str, queue_id: str = "",
                       clock: Callable[[], float] = time.perf_counter, client_port: int | None = None) -> Decision:
    """``decider.decide(envelope)``, logged as one ``checkid.decision`` line with its latency.

    :param front: the front-end's name, for the metrics and the log line
    :param queue_id: the MTA's queue id when it sent one ("" otherwise)
    :param client_port: the client's TCP port when the front-end knows it (the MTA logs it
        with ``smtpd_client_port_logging``): what joins a line without a queue id
    """
    start = clock()
    decision = await decider.decide(envelope, frontend=front)
    if log.isEnabledFor(logging.INFO):
        log_decision(front, log_fields(decider, envelope, decision, queue_id, client_port, (clock() - start) * 1000))
    return decision


def log_decision(front: str, fields: dict[str, Any]) -> None:
    """Write the decision line of ``fields`` (from :func:`log_fields`), as ``log.info`` would
    but without its caller lookup (a walk up the stack for a file name and line no format
    shows): the record is made here and handed to the logger's handlers. The caller checks
    that INFO is enabled."""
    record = _record(f"{front} {render(fields)}")
    record.__dict__["fields"] = {"frontend": front, **fields}
    log.handle(record)


#: a decision record's attributes that are the same for every line of this process (see
#: :func:`_record`), with the logging switches they were made under; None: to be made
_template: tuple[dict[str, Any], bool] | None = None


def _forget_template() -> None:
    global _template
    _template = None


os.register_at_fork(after_in_child=_forget_template)  # a worker's lines carry its own pid


def _record(message: str) -> logging.LogRecord:
    """The decision line's record, as the record factory makes it. With the plain
    :class:`logging.LogRecord` and no thread or process name recorded (the runtime's
    :func:`~checkid.runtime.logs.lean_records`), a copy of the attributes every line shares
    with only the message and the times set: ``LogRecord.__init__`` would work them all out
    again (a ``getpid`` system call, the file name split) for each line."""
    global _template
    factory = logging.getLogRecordFactory()
    if factory is not logging.LogRecord or logging.logThreads or logging.logMultiprocessing:
        return factory(_NAME, logging.INFO, __file__, 0, message, None, None, "timed_decide")
    if _template is None or _template[1] != logging.logProcesses:
        made = logging.LogRecord(_NAME, logging.INFO, __file__, 0, "", None, None, "timed_decide")
        _template = (made.__dict__, logging.logProcesses)
    record = logging.LogRecord.__new__(logging.LogRecord)
    attrs = record.__dict__
    attrs.update(_template[0])
    now = time.time()
    attrs["msg"] = message
    attrs["created"] = now
    attrs["msecs"] = int((now - int(now)) * 1000) + 0.0  # LogRecord's own arithmetic
    attrs["relativeCreated"] = (now - logging._startTime) * 1000  # type: ignore[attr-defined]
    return record


def log_fields(decider: Decider, envelope: Envelope, decision: Decision, queue_id: str, client_port: int | None,
               latency_ms: float) -> dict[str, Any]:
    """The decision line's fields, in order; None where the value is unknown."""
    shown = decision.would or decision
    action = f"would_{shown.action.value.lower()}" if decision.would is not None else decision.action.value
    sender = envelope.sender
    return {
        "queue_id": queue_id or None,
        "ip": envelope.ip,
        "id": envelope.id or None,
        "helo": envelope.helo or None,
        "from": decider.log_address(sender) if sender else sender,
        "identity": decision.identity or None,
        "identity_from": decision.identity_source or None,
        "to": ",".join(decider.log_address(r) for r in envelope.rcpts) or None,
        "action": action,
        "code": shown.code,
        "xcode": shown.xcode or None,
        "text": shown.text,
        "stage": shown.stage or None,
        "reason": shown.reason or None,
        "client_port": client_port or None,
        "latency_ms": round(latency_ms, 2),
    }


def render(fields: dict[str, Any]) -> str:
    """The ``key=value`` words of the text line: addresses in ``<>``, the reply text quoted,
    ``-`` for an unknown value; anything that is not a plain word JSON-quoted."""
    # one line per decision: the common cases (None, a plain str) first, the plain-word test
    # inline; the reply text's quoting is kept for the next line (the memo answers a repeated
    # request with the same Decision, hence the same text object)
    global _last_text
    words: list[str] = []
    append = words.append
    search = _NOT_PLAIN.search
    for key, value in fields.items():
        if value is None:
            append(key + "=-")
        elif value.__class__ is str and key != "text" and key != "from" and key != "to":
            append(f"{key}={value}" if value and value.isprintable() and search(value) is None
                   else f"{key}={_quoted(value)}")
        elif value.__class__ is float:
            append(f"{key}={value:.2f}")
        elif key == "text" and isinstance(value, str):
            if value is not _last_text[0]:
                _last_text = (value, _quoted(value))
            append(f"{key}={_last_text[1]}")
        elif isinstance(value, float):
            append(f"{key}={value:.2f}")
        elif isinstance(value, int):
            append(f"{key}={value}")
        elif key == "from" or key == "to":
            append(f"{key}=<{value}>" if not value or _plain(value.replace(",", "")) else f"{key}={_quoted(value)}")
        elif key == "text":
            append(f"{key}={_quoted(value)}")
        else:
            append(f"{key}={value}" if _plain(value) else f"{key}={_quoted(value)}")
    return " ".join(words)


#: the last reply text :func:`render` quoted, and its quoting
_last_text: tuple[str | None, str] = (None, "")


def _plain(value: str) -> bool:
    return bool(value) and value.isprintable() and _NOT_PLAIN.search(value) is None


def _quoted(value: str) -> str:
    """``value`` as a JSON string, every character that is not printable escaped (json leaves
    C1 controls and U+2028 as they are with ``ensure_ascii=False``)."""
    text = _json_string(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else
                   json.dumps(c)[1:-1] for c in text)
