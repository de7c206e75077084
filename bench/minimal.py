"""The limits: the least any server on this stack could do per request, the ceiling every
front-end row of bench/peers.py is divided by.

bench/nullserver.py runs checkid's own protocol code over a fixed decision, so it includes
checkid's codec and session costs and hides them. These do less than any real server could:

- ``policy``: a uvloop ``asyncio.Protocol`` that only looks for the blank line ending each
  request in what it has received and answers a fixed ``action=DUNNO`` per request found
  (no attribute is split, nothing is checked);
- ``msgpack-rpc``: one that only frames (``msgpack.Unpacker``) and answers each request with
  a fixed result (the null servers' decision, packed once at start), under its msgid;
- ``milter``: the C null milter on libmilter (bench/c/nullmilter.c), built here under
  .bench-build/ (:func:`nullmilter`) and run over a unix socket or TCP.

The Python ones fork ``--workers`` processes on one SO_REUSEPORT port, as checkid and the null
servers do, so the rows compare like with like.

    .venv/bin/python -m bench.minimal --protocol policy --port 10040 [--workers 2]
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import subprocess
from pathlib import Path
from typing import cast

import msgpack
import uvloop

from bench.nullserver import DECISION, prefork

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".bench-build"
PROTOCOLS = ("policy", "msgpack-rpc")
#: what the policy server answers to every request (Postfix's "no opinion")
POLICY_REPLY = b"action=DUNNO\n\n"
#: the bound on what a connection may leave unanswered: a Postfix policy request is a few
#: hundred bytes (Postfix itself caps an attribute at 100 KiB: smtpd_policy_service_max_size)
MAX_PENDING = 1 << 20


def fixed_result() -> list[object]:
    """The null servers' decision as checkid's ``checkID`` answers it (packed once)."""
    action, reply, headers = DECISION.as_tuple()
    return [action, list(reply), headers]


class MinimalPolicy(asyncio.Protocol):
    """Finds each request's end (an empty line) and answers ``action=DUNNO``; nothing more."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buf = self.pending + data if self.pending else data
        n = buf.count(b"\n\n")
        if n:
            self.transport.write(POLICY_REPLY * n)
            buf = buf[buf.rindex(b"\n\n") + 2:]
        if len(buf) > MAX_PENDING:
            self.transport.close()
            return
        self.pending = buf


class MinimalMsgpack(asyncio.Protocol):
    """Frames MessagePack-RPC requests and answers each with the same result."""

    def __init__(self, result: bytes) -> None:
        self.transport: asyncio.Transport | None = None
        # the same bound checkid's codec has on a message (protocols/msgpack_rpc/codec.py)
        self.unpacker = msgpack.Unpacker(max_buffer_size=MAX_PENDING)
        #: ``[1, msgid, nil, result]`` is this prefix, the msgid, then this suffix
        self.head = b"\x94\x01"
        self.tail = b"\xc0" + result

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            self.unpacker.feed(data)
        except msgpack.BufferFull:
            self.transport.close()
            return
        out = []
        for message in self.unpacker:
            out.append(self.head + msgpack.packb(message[1]) + self.tail)
        if out:
            self.transport.write(b"".join(out))


def serve(protocol: str, sock: socket.socket) -> None:
    """Run one worker's loop on ``sock`` until SIGTERM or SIGINT."""
    result = msgpack.packb(fixed_result(), use_bin_type=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        factory = MinimalPolicy if protocol == "policy" else (lambda: MinimalMsgpack(result))
        server = await loop.create_server(factory, sock=sock)
        await stop.wait()
        server.close()
    uvloop.run(main())


def nullmilter() -> Path:
    """The C null milter, built (once per source change) under .bench-build/; needs
    libmilter-dev (scripts/bench-deps)."""
    source = ROOT / "bench" / "c" / "nullmilter.c"
    binary = BUILD / "nullmilter"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(source), "-lmilter"], check=True)
    return binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="policy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    prefork(args.port, args.workers, lambda sock: serve(args.protocol, sock))


if __name__ == "__main__":
    main()
