"""``checkid serve``, single process: the configured listeners on one uvloop event loop.

The runtime knows no mail: each protocol is a factory looked up by name, imported when a
listener asks for it. SIGTERM/SIGINT stop accepting, give in-flight requests
``server.grace`` seconds, then exit.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import stat
from collections.abc import Callable
from typing import Any

import uvloop

from checkid.engine.config import Config, ListenConfig, parse_listen
from checkid.engine.engine import Engine
from checkid.engine.errors import ConfigError

log = logging.getLogger(__name__)

#: protocol name -> "module:function" returning a protocol factory for (engine, config, listen)
PROTOCOLS = {
    "policy": "checkid.protocols.postfix_policy.listener:factory",
    "msgpack-rpc": "checkid.protocols.msgpack_rpc.listener:factory",
}


def protocol_factory(engine: Engine, config: Config, listen: ListenConfig) -> Callable[[], asyncio.Protocol]:
    module, _, name = PROTOCOLS[listen.protocol].partition(":")
    make: Callable[..., Callable[[], asyncio.Protocol]] = getattr(importlib.import_module(module), name)
    return make(engine, config, listen)


async def open_listeners(engine: Engine, config: Config) -> list[asyncio.base_events.Server]:
    """Bind every configured listener. :raises ConfigError: naming the address that failed"""
    loop = asyncio.get_running_loop()
    servers = []
    for listen in config.listen:
        kind, host, port = parse_listen(listen.address)
        factory = protocol_factory(engine, config, listen)
        try:
            if kind == "unix":
                _remove_stale_socket(host)
                servers.append(await loop.create_unix_server(factory, host))
            else:
                servers.append(await loop.create_server(factory, host, port, reuse_address=True))
        except OSError as e:
            for server in servers:
                server.close()
            raise ConfigError(f"listen {listen.address}: {e.strerror or e}") from None
        log.info("listening: %s on %s", listen.protocol + (" (oneshot)" if listen.oneshot else ""),
                 listen.address)
    return servers


def _remove_stale_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


async def serve(config: Config, ready: Callable[[list[Any]], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    engine = Engine(config)
    servers = await open_listeners(engine, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("checkid serving with policy %s", engine.policy.current.path)
    if ready is not None:
        ready(servers)
    await stop.wait()
    log.info("stopping: no new connections; up to %.0f s for requests in flight", config.server.grace)
    for server in servers:
        server.close()
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if pending:
        await asyncio.wait(pending, timeout=config.server.grace)
    log.info("stopped")


def run(config: Config) -> None:
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="checkid[%(process)d]: %(levelname)s %(name)s: %(message)s", force=True)
    uvloop.run(serve(config))
