"""Protocols by name, for the workers: the runtime knows no mail, each protocol is a
factory imported when a listener asks for it."""
from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable

from checkid.config import Config, ListenConfig
from checkid.protocols.base import ServerState
from checkid.protocols.decider import Decider

#: protocol name -> "module:function" returning a protocol factory for (decider, state, config, listen)
PROTOCOLS = {
    "policy": "checkid.protocols.postfix_policy.listener:factory",
    "msgpack-rpc": "checkid.protocols.msgpack_rpc.listener:factory",
    "milter": "checkid.protocols.milter.listener:factory",
    "smtp": "checkid.protocols.smtp.listener:factory",
}


def protocol_factory(decider: Decider, state: ServerState, config: Config,
                     listen: ListenConfig) -> Callable[[], asyncio.Protocol]:
    """The protocol factory for ``listen``: its connections call ``decider`` and are tracked
    (counted, shut down) in ``state``."""
    module, _, name = PROTOCOLS[listen.protocol].partition(":")
    make: Callable[..., Callable[[], asyncio.Protocol]] = getattr(importlib.import_module(module), name)
    return make(decider, state, config, listen)
