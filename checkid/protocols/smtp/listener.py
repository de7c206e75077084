"""The SMTP front door's listener factory, for the runtime."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from checkid.config import Config, ListenConfig, parse_listen
from checkid.protocols.base import ServerState
from checkid.protocols.decider import Decider
from checkid.protocols.smtp.relay import RelayOptions
from checkid.protocols.smtp.server import DoorOptions, SmtpProtocol
from checkid.protocols.smtp.session import SmtpOptions


def options(config: Config, listen: ListenConfig) -> DoorOptions:
    """The front door's options from the ``[smtp]`` section and the listener's table."""
    smtp = config.smtp
    hostname = smtp.hostname or socket.gethostname()  # no DNS at start-up (getfqdn would ask)
    session = SmtpOptions(hostname=hostname, max_rcpts=smtp.max_rcpts, max_errors=smtp.max_errors,
                          max_commands=smtp.max_commands, max_message=smtp.max_message, hold=smtp.hold,
                          bare_lf=smtp.bare_lf, backend_client=listen.backend_client)
    relay = RelayOptions(target=parse_listen(listen.backend), hostname=hostname,
                         backend_client=listen.backend_client, timeout=smtp.backend_timeout,
                         data_timeout=smtp.data_timeout)
    return DoorOptions(session, relay, listen.proxy_protocol, listen.proxy_hosts, smtp.idle_timeout)


def factory(decider: Decider, state: ServerState, config: Config,
            listen: ListenConfig) -> Callable[[], asyncio.Protocol]:
    door = options(config, listen)
    return lambda: SmtpProtocol(decider, state, door)
