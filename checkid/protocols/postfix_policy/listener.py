"""The policy listener's factory, for the runtime."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from checkid.config import Config, ListenConfig
from checkid.engine.engine import Engine
from checkid.protocols.postfix_policy.replies import ReplyOptions
from checkid.protocols.postfix_policy.server import PolicyProtocol
from checkid.protocols.postfix_policy.session import PolicyOptions


def options(config: Config) -> PolicyOptions:
    pp = config.postfix_policy
    return PolicyOptions(pp.decide_at, ReplyOptions(pp.accept, pp.filter, pp.tempfail))


def factory(engine: Engine, config: Config, listen: ListenConfig) -> Callable[[], asyncio.Protocol]:
    opts = options(config)
    idle = config.server.idle_timeout
    return lambda: PolicyProtocol(engine, opts, oneshot=listen.oneshot, idle_timeout=idle)
