"""The decision log line alone (pytest-benchmark): what ``timed_decide`` adds to a decision.

Run: ``.venv/bin/python -m pytest bench/test_logline.py --benchmark-only``.

Each round writes BATCH lines in one turn of an event loop, as a worker under load writes
the lines of the requests that turn served, in the runtime's text format to a file, for one
decided RCPT (a fixed decision, a Postfix-like envelope): the fields, their rendering, the
record, the format and the write. The reference is the same line as ``timed_decide`` wrote
it before, in the same run: ``Logger.info`` (a caller lookup, the thread's and process's
names in each record) to a ``logging.FileHandler`` (a flush per line).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.nullserver import DECISION, NullDecider
from checkid.engine.decision import Envelope
from checkid.protocols import decider as decider_module
from checkid.runtime import logs

BATCH = 1000
ENVELOPE = Envelope(ip="192.0.2.1", helo="mx.example.com", sender="a@example.com", rcpts=("b@example.org",))
LINE = " INFO checkid.decision: policy queue_id=4ABC123 ip=192.0.2.1 "


def _fields() -> dict:
    return decider_module.log_fields(NullDecider(), ENVELOPE, DECISION, "4ABC123", 53762, 0.123)


def _measure(benchmark, tmp_path: Path, handler_class: type[logging.FileHandler], line: Callable[[], None]) -> None:
    path = tmp_path / "checkid.log"
    handler = handler_class(path, encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logs.TextFormatter(logs.FORMAT))
    logger = logging.getLogger(logs.DECISION_LOGGER)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    loop = asyncio.new_event_loop()

    async def batch() -> None:
        for _ in range(BATCH):
            line()
        await asyncio.sleep(0)  # the end of the turn: the lines are written

    try:
        benchmark.extra_info["batch"] = BATCH
        benchmark(lambda: loop.run_until_complete(batch()))
        assert path.read_text().count(LINE) >= BATCH
    finally:
        loop.close()
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        handler.close()


def test_decision_log_line(benchmark, tmp_path: Path) -> None:
    threads, processes = logging.logThreads, logging.logMultiprocessing
    logs.lean_records()  # as setup_logging does
    try:
        _measure(benchmark, tmp_path, logs.TurnFlushFileHandler, lambda: decider_module.log_decision("policy", _fields()))
    finally:
        logging.logThreads, logging.logMultiprocessing = threads, processes


def test_reference_decision_log_line_logger_info(benchmark, tmp_path: Path) -> None:
    log = logging.getLogger(logs.DECISION_LOGGER)

    def line() -> None:
        fields = _fields()
        log.info("%s %s", "policy", decider_module.render(fields), extra={"fields": {"frontend": "policy", **fields}})

    _measure(benchmark, tmp_path, logging.FileHandler, line)
