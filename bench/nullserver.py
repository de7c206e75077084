"""Null servers: checkid's own Protocol code for each front-end over a Decider that answers
a fixed decision without deciding. They measure the stack's limit (uvloop, the codec, the
session), the reference every front-end benchmark is compared with.

    .venv/bin/python -m bench.nullserver --protocol policy --port 10040 [--workers 2]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
from collections.abc import Callable

import uvloop

from checkid.config import Config, ListenConfig
from checkid.engine.decision import Action, Decision, Envelope, Header
from checkid.engine.trace import Trace
from checkid.protocols.base import ServerState
from checkid.protocols.registry import protocol_factory

DECISION = Decision(Action.ACCEPT, 250, "", "Sender OK",
                    (Header("Authent:", "192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"),), "null")


class NullDecider:
    """A :class:`checkid.protocols.decider.Decider` answering DECISION at once."""

    async def decide(self, envelope: Envelope, trace: Trace | None = None, frontend: str = "inprocess") -> Decision:
        return DECISION

    def recipient_class(self, rcpt: str) -> str:
        return ""

    def forged_header(self, name: str, value: str) -> bool:
        return False

    def body_digest(self, headers: tuple[tuple[str, str], ...]) -> None:
        return None

    def log_address(self, address: str) -> str:
        return address


def serve(protocol: str, sock: socket.socket) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        state = ServerState()
        listen = ListenConfig(protocol, "127.0.0.1:1")  # type: ignore[arg-type]  # checked by argparse
        factory = protocol_factory(NullDecider(), state, Config(), listen)
        server = await loop.create_server(factory, sock=sock)
        await stop.wait()
        server.close()
        await state.shutdown(5.0)
    uvloop.run(main())


def prefork(port: int, workers: int, serve_one: Callable[[socket.socket], None]) -> None:
    """Fork ``workers`` processes, each running ``serve_one`` on its own SO_REUSEPORT socket
    bound to 127.0.0.1:``port`` (as checkid's runtime does); wait for them, passing SIGTERM
    and SIGINT on."""
    children = []
    for _ in range(workers):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        pid = os.fork()
        if pid == 0:
            serve_one(sock)
            os._exit(0)
        sock.close()
        children.append(pid)

    def stop_children(*_: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop_children)
    signal.signal(signal.SIGINT, stop_children)
    for pid in children:
        os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("policy", "msgpack-rpc", "milter"), default="policy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    prefork(args.port, args.workers, lambda sock: serve(args.protocol, sock))


if __name__ == "__main__":
    main()
