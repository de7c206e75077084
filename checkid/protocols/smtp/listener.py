"""The SMTP front door's listener factory, for the runtime."""
from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from checkid.config import Config, ListenConfig, SmtpConfig, parse_listen
from checkid.errors import ConfigError
from checkid.protocols.base import ServerState
from checkid.protocols.decider import Decider
from checkid.protocols.smtp.relay import RelayOptions, backend_tls_context
from checkid.protocols.smtp.server import DoorOptions, Occupancy, SmtpProtocol
from checkid.protocols.smtp.session import SmtpOptions


def check(config: Config, listen: ListenConfig) -> None:
    """What a worker will load for this listener, loaded now. :raises ConfigError:"""
    tls_context(config.smtp)


def tls_context(smtp: SmtpConfig) -> ssl.SSLContext | None:
    """The server context for STARTTLS from ``tls_cert``/``tls_key`` (None without them).

    :raises ConfigError: a file that cannot be read or does not hold a matching pair
    """
    if not smtp.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8996 deprecates TLS 1.0 and 1.1; mail servers still meet old clients, but 1.2 is from 2008
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(smtp.tls_cert, smtp.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"smtp.tls_cert: cannot load {smtp.tls_cert} with key {smtp.tls_key}: {e}") from None
    return context


def options(config: Config, listen: ListenConfig) -> DoorOptions:
    """The front door's options from the ``[smtp]`` section and the listener's table.

    :raises ConfigError: the STARTTLS certificate cannot be loaded
    """
    smtp = config.smtp
    hostname = smtp.hostname or socket.gethostname()  # no DNS at start-up (getfqdn would ask)
    tls = tls_context(smtp)
    session = SmtpOptions(hostname=hostname, max_rcpts=smtp.max_rcpts, max_errors=smtp.max_errors,
                          max_commands=smtp.max_commands, max_message=smtp.max_message, hold=smtp.hold,
                          bare_lf=smtp.bare_lf, backend_client=listen.backend_client, starttls=tls is not None)
    relay = RelayOptions(target=parse_listen(listen.backend), hostname=hostname,
                         backend_client=listen.backend_client, timeout=smtp.backend_timeout,
                         data_timeout=smtp.data_timeout, tls=smtp.backend_tls,
                         tls_context=backend_tls_context() if smtp.backend_tls != "no" else None)
    return DoorOptions(session, relay, listen.proxy_protocol, listen.proxy_hosts, smtp.idle_timeout,
                       session_timeout=smtp.session_timeout, max_connections=smtp.max_connections,
                       max_per_ip=smtp.max_per_ip, tls=tls)


def factory(decider: Decider, state: ServerState, config: Config,
            listen: ListenConfig) -> Callable[[], asyncio.Protocol]:
    door = options(config, listen)
    clients = Occupancy()  # max_per_ip counts per listener in each worker
    return lambda: SmtpProtocol(decider, state, door, clients)
