"""The MessagePack-RPC listener's factory, for the runtime."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from checkid.config import Config, ListenConfig
from checkid.protocols.base import ServerState
from checkid.protocols.decider import Decider
from checkid.protocols.msgpack_rpc.server import RpcProtocol


def factory(decider: Decider, state: ServerState, config: Config,
            listen: ListenConfig) -> Callable[[], asyncio.Protocol]:
    idle, request = config.server.idle_timeout, config.server.request_timeout
    return lambda: RpcProtocol(decider, state, idle, request)
