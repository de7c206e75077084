"""Hostile input against a running ``checkid serve`` (issue 14): a share of the in-process
inputs (the first ``size(smoke, 10,000)`` of each protocol's, same seed), each on a
connection of its own, in its chunking, then a half-close; the daemon must close every one
of them (an answer or a refusal, nothing left hanging). After each batch: the worker PIDs are
those of the start (no worker died), a valid request on every protocol gets the right answer
(:func:`tests.reliability.daemon.right`), the log holds no traceback, and each worker's RSS
stays within :data:`RSS_GROWTH_KIB` of what it was before the phase.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from tests.conftest import run
from tests.reliability import generators, record, size
from tests.reliability.daemon import Daemon, wrong_answers

SEED = generators.SEED

#: inputs per protocol against the daemon
INPUTS = size(400, 10_000)
#: inputs between two checks of PIDs, answers and RSS
BATCH = size(100, 1_000)
#: connections open at once (each input has its own): well under any connection cap
CONCURRENCY = 16
#: bound on the daemon closing a connection after our half-close; past it, a hang
CLOSE_SECONDS = 10.0
#: the stated bound: what one connection may hold is bounded (milter under 10 MiB, a policy
#: request 64 KiB, an RPC message 2 MiB), so 16 connections at once, plus what the
#: allocator keeps of them, stay under 128 MiB above a worker's RSS before the phase
RSS_GROWTH_KIB = 128 * 1024


@dataclass
class Outcomes:
    closed: int = 0
    reset: int = 0
    hangs: list[str] = field(default_factory=list)
    replied_bytes: int = 0


async def one(port: int, protocol: str, index: int, out: Outcomes) -> None:
    rng = generators.rng_for(SEED, protocol, index)
    item = generators.GENERATORS[protocol](rng)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        out.reset += 1
        return
    try:
        for chunk in generators.chunks(rng, item.data):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
        deadline = asyncio.get_running_loop().time() + CLOSE_SECONDS
        while data := await asyncio.wait_for(reader.read(65536), max(0.0, deadline - asyncio.get_running_loop().time())):
            out.replied_bytes += len(data)
        out.closed += 1
    except asyncio.TimeoutError:
        out.hangs.append(f"{protocol} input {index} (seed {SEED}, kind {item.kind}): not closed in {CLOSE_SECONDS:g} s")
    except OSError:  # refused mid-stream: reset, or the pipe closed under our writes
        out.reset += 1
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def batch(port: int, protocol: str, start: int, count: int, out: Outcomes) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def bounded(index: int) -> None:
        async with limit:
            await one(port, protocol, index, out)
    await asyncio.gather(*(bounded(i) for i in range(start, start + count)))


def tracebacks_in(log: str) -> list[str]:
    """Each traceback of ``log`` with the line before it (what failed)."""
    lines = log.splitlines()
    return ["\n".join(lines[max(0, i - 1):i + 25]) for i, line in enumerate(lines) if "Traceback" in line]


PORTS = {"policy": "policy", "msgpack-rpc": "rpc", "milter": "milter", "smtp": "smtp"}


@pytest.mark.parametrize("protocol", generators.PROTOCOLS)
def test_fuzz_daemon_survives_and_still_answers_right(daemon: Daemon, protocol: str) -> None:
    port = getattr(daemon.ports, PORTS[protocol])
    pids = daemon.serving()
    assert wrong_answers(daemon) == {}
    rss_before = daemon.rss_kib()
    tracebacks = daemon.log.read_text(errors="replace").count("Traceback")
    out = Outcomes()
    wrong: list[str] = []
    rss_peak = dict(rss_before)
    began = time.monotonic()
    for start in range(0, INPUTS, BATCH):
        run(batch(port, protocol, start, min(BATCH, INPUTS - start), out))
        now = daemon.worker_pids()
        assert now == pids, f"workers {pids} became {now} after {protocol} inputs {start}..{start + BATCH} (seed {SEED})"
        answers = wrong_answers(daemon)
        wrong += [f"after input {start + BATCH}: {name}: {answer}" for name, answer in answers.items()]
        for pid, rss in daemon.rss_kib().items():
            rss_peak[pid] = max(rss_peak.get(pid, 0), rss)
    seconds = time.monotonic() - began
    rss_after = daemon.rss_kib()
    log = daemon.log.read_text(errors="replace")
    new_tracebacks = log.count("Traceback") - tracebacks
    record(f"fuzz daemon {protocol}", seed=SEED, inputs=INPUTS, closed=out.closed, reset=out.reset,
           hangs=len(out.hangs), crashes=0 if now == pids else 1, tracebacks=new_tracebacks, wrong_answers=len(wrong),
           rss_before_kib=sorted(rss_before.values()), rss_peak_kib=sorted(rss_peak.values()),
           rss_after_kib=sorted(rss_after.values()), rss_bound_kib=RSS_GROWTH_KIB, seconds=round(seconds, 1))
    assert not out.hangs, f"{len(out.hangs)} connections left open:\n" + "\n".join(out.hangs[:5])
    assert out.closed + out.reset == INPUTS
    assert not wrong, "\n".join(wrong[:8])
    assert new_tracebacks == 0, "\n\n".join(tracebacks_in(log)[-3:])
    for pid, peak in rss_peak.items():
        assert peak <= rss_before[pid] + RSS_GROWTH_KIB, (
            f"worker {pid}: RSS {rss_before[pid]} KiB before, {peak} KiB at most after a batch (seed {SEED})")
