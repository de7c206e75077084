"""The policy listener's factory, for the runtime."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from checkid.config import Config, ListenConfig
from checkid.protocols.base import ServerState
from checkid.protocols.decider import Decider
from checkid.protocols.postfix_policy.replies import ReplyOptions
from checkid.protocols.postfix_policy.server import PolicyProtocol
from checkid.protocols.postfix_policy.session import PolicyOptions


def options(config: Config) -> PolicyOptions:
    pp = config.postfix_policy
    return PolicyOptions(pp.decide_at, ReplyOptions(pp.accept, pp.filter, pp.tempfail))


def factory(decider: Decider, state: ServerState, config: Config,
            listen: ListenConfig) -> Callable[[], asyncio.Protocol]:
    opts = options(config)
    idle, request = config.server.idle_timeout, config.server.request_timeout
    return lambda: PolicyProtocol(decider, state, opts, oneshot=listen.oneshot, idle_timeout=idle,
                                  request_timeout=request)
