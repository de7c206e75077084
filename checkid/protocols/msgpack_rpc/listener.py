"""The MessagePack-RPC listener's factory, for the runtime."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from checkid.config import Config, ListenConfig
from checkid.engine.engine import Engine
from checkid.protocols.msgpack_rpc.server import RpcProtocol


def factory(engine: Engine, config: Config, listen: ListenConfig) -> Callable[[], asyncio.Protocol]:
    idle = config.server.idle_timeout
    return lambda: RpcProtocol(engine, idle)
