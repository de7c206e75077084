"""Protocols by name, for the workers: the runtime knows no mail, each protocol is a
factory imported when a listener asks for it."""
from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable

from checkid.config import Config, ListenConfig
from checkid.protocols.base import Server, ServerState
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
    make: Callable[..., Callable[[], Server]] = getattr(importlib.import_module(module), name)
    inner = make(decider, state, config, listen)

    def factory() -> Server:
        connection = inner()
        connection.listener = listen  # counted per listener: ServerState.by_listener
        return connection

    return factory


def frontend(listen: ListenConfig) -> str:
    """The front-end name the metrics give ``listen``'s connections."""
    return f"{listen.protocol}-oneshot" if listen.protocol == "policy" and listen.oneshot else listen.protocol


def check(config: Config) -> None:
    """Load what each listener's protocol needs before any worker does (a listener module's
    optional ``check(config, listen)``: the front door's certificate, say), so that a file
    that does not load is refused at start or reload, not by workers that cannot start.

    :raises ConfigError: naming the key at fault
    """
    for listen in config.listen:
        module = importlib.import_module(PROTOCOLS[listen.protocol].partition(":")[0])
        checker: Callable[[Config, ListenConfig], None] | None = getattr(module, "check", None)
        if checker is not None:
            checker(config, listen)
