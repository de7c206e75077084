"""A warm policy request end to end, in-process (pytest-benchmark), and the decision log line.

Run: ``.venv/bin/python -m pytest bench/test_policy_warm.py --benchmark-only``.

One request is what a policy connection does for a Postfix RCPT request: decode the bytes,
the session's answer (recipient class, ``timed_decide``: ``Engine.decide`` and the log line),
render and encode the action. Every DNS answer is cached. Rows, each per request:

- the default policy, which declares its inputs: a repeated request is answered by the
  decision memo (:mod:`checkid.engine.memo`);
- the same policy without ``DECISION_INPUTS``: the policy runs for every request;
- either with the decision log line written (the runtime's text format, to a file), so the
  line's own cost is the difference of two rows of one run.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from checkid.config import PolicyConfig
from checkid.engine.engine import Engine
from checkid.engine.policy import DEFAULT_PATH
from checkid.protocols import eager
from checkid.protocols.postfix_policy import codec
from checkid.protocols.postfix_policy.session import PolicyOptions, PolicySession
from checkid.runtime.logs import FORMAT, TextFormatter, TurnFlushFileHandler, lean_records
from testsupport.config import base_config
from testsupport.dnsserver import TestDnsServer

BATCH = 1000
ROOT = Path(__file__).resolve().parent.parent
ZONES = ROOT / "testsupport" / "zones"
_TEMPLATE = codec.RequestParser()
_TEMPLATE.receive_data((ROOT / "tests" / "data" / "postfix37_rcpt_request.txt").read_bytes())
#: the Postfix 3.7 RCPT request of the codec benchmark, from a client of the test zones
ATTRS = {**(_TEMPLATE.next_event() or {}), "client_address": "192.0.2.1", "helo_name": "example.com",
         "sender": "a@example.com"}


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = uvloop.new_event_loop()
    asyncio.set_event_loop(lp)
    yield lp
    asyncio.set_event_loop(None)
    lp.close()


@pytest.fixture
def decision_log(tmp_path: Path) -> Iterator[Path]:
    """The decision line written as the runtime writes it (:func:`checkid.runtime.logs.setup_logging`:
    text format, to a file flushed once per loop turn, records without thread or process names)."""
    path = tmp_path / "checkid.log"
    handler = TurnFlushFileHandler(path, encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(TextFormatter(FORMAT))
    logger = logging.getLogger("checkid.decision")
    saved = logger.level, logger.propagate
    switches = logging.logThreads, logging.logMultiprocessing
    lean_records()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logging.logThreads, logging.logMultiprocessing = switches
        handler.close()


def _engine(server: TestDnsServer, tmp_path: Path, memo: bool) -> Engine:
    config = base_config(server)
    if not memo:
        source = "\n".join(line for line in DEFAULT_PATH.read_text().splitlines()
                           if not line.startswith("DECISION_INPUTS"))
        (tmp_path / "undeclared.py").write_text(source)
        config = dataclasses.replace(config, policy=PolicyConfig(path=str(tmp_path / "undeclared.py")))
    return Engine(config)


def _requests(benchmark, loop, server, engine: Engine) -> None:
    session = PolicySession(engine, PolicyOptions())
    parser = codec.RequestParser()
    wire = [codec.encode_request({**ATTRS, "instance": f"{n:x}.0"}) for n in range(BATCH)]

    async def batch() -> bytes:  # on the loop, as a server's data_received runs
        for data in wire:
            parser.receive_data(data)
            request = parser.next_event()
            assert request is not None
            answer = eager.start(session.answer(request))  # done at once when warm
            out = codec.encode_reply(answer.result() if answer.done() else await answer)
        return out

    loop.run_until_complete(batch())  # warm the caches
    assert loop.run_until_complete(batch()).startswith(b"action=PREPEND Authent:")
    asked = server.total
    benchmark.extra_info["batch"] = BATCH
    benchmark(lambda: loop.run_until_complete(batch()))
    assert server.total == asked  # warm: no DNS query while measured


def test_policy_warm_request_memo(benchmark, loop, server, tmp_path):
    logging.getLogger("checkid.decision").setLevel(logging.WARNING)
    try:
        _requests(benchmark, loop, server, _engine(server, tmp_path, memo=True))
    finally:
        logging.getLogger("checkid.decision").setLevel(logging.NOTSET)


def test_policy_warm_request_no_memo(benchmark, loop, server, tmp_path):
    logging.getLogger("checkid.decision").setLevel(logging.WARNING)
    try:
        _requests(benchmark, loop, server, _engine(server, tmp_path, memo=False))
    finally:
        logging.getLogger("checkid.decision").setLevel(logging.NOTSET)


def test_policy_warm_request_memo_logged(benchmark, loop, server, tmp_path, decision_log):
    _requests(benchmark, loop, server, _engine(server, tmp_path, memo=True))
    assert decision_log.read_text().count(" checkid.decision: policy ") > BATCH


def test_policy_warm_request_no_memo_logged(benchmark, loop, server, tmp_path, decision_log):
    _requests(benchmark, loop, server, _engine(server, tmp_path, memo=False))
