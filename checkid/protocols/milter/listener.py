"""The milter listener's factory, for the runtime."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from checkid.config import Config, ListenConfig
from checkid.protocols.base import ServerState
from checkid.protocols.decider import Decider
from checkid.protocols.milter.server import MilterProtocol
from checkid.protocols.milter.session import MilterOptions


def factory(decider: Decider, state: ServerState, config: Config,
            listen: ListenConfig) -> Callable[[], asyncio.Protocol]:
    m = config.milter
    options = MilterOptions(m.decide_at, m.quarantine, m.progress_interval)
    idle, request = config.server.idle_timeout, config.server.request_timeout
    return lambda: MilterProtocol(decider, state, options, idle, request)
