"""Protocols by name, for the workers: the runtime knows no mail, each protocol is a
factory imported when a listener asks for it."""
from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable

from checkid.config import Config, ListenConfig
from checkid.engine.engine import Engine

#: protocol name -> "module:function" returning a protocol factory for (engine, config, listen)
PROTOCOLS = {
    "policy": "checkid.protocols.postfix_policy.listener:factory",
    "msgpack-rpc": "checkid.protocols.msgpack_rpc.listener:factory",
    "milter": "checkid.protocols.milter.listener:factory",
}


def protocol_factory(engine: Engine, config: Config, listen: ListenConfig) -> Callable[[], asyncio.Protocol]:
    module, _, name = PROTOCOLS[listen.protocol].partition(":")
    make: Callable[..., Callable[[], asyncio.Protocol]] = getattr(importlib.import_module(module), name)
    return make(engine, config, listen)
