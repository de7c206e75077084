"""The sections the process runtime reads: server, cache and metrics, each with the value
checks its type cannot express (``check(path)`` raises :class:`ConfigError` naming the key)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from checkid.config.addresses import parse_listen
from checkid.errors import ConfigError

#: ``[server] log_file`` that means the syslog daemon, not a file
SYSLOG = "syslog"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    #: worker processes; 0 means one per CPU
    workers: int = 0
    #: drop to this user (and group) after binding the listeners, when started as root
    user: str = ""
    group: str = ""
    #: shared cache and other state; empty: /var/lib/checkid as root, else ~/.local/state/checkid
    state_dir: str = ""
    #: logging level: one line per decision at "info"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: log file, reopened on SIGUSR1; empty means standard error; "syslog" sends to the
    #: syslog daemon at ``syslog_socket`` with ``syslog_facility`` (into mail.log by default)
    log_file: str = ""
    #: "text": one line per record; "json": one JSON object per line, a record's fields as keys
    log_format: Literal["text", "json"] = "text"
    #: the syslog daemon's unix datagram socket, for ``log_file = "syslog"``
    syslog_socket: str = "/dev/log"
    #: the syslog facility, for ``log_file = "syslog"``
    syslog_facility: Literal["mail", "daemon", "user", "local0", "local1", "local2", "local3", "local4",
                             "local5", "local6", "local7"] = "mail"
    #: seconds workers get to finish in-flight requests on SIGTERM/SIGINT
    grace: float = 10.0
    #: seconds between SIGTERM and the drain during which ``/healthz`` answers 503
    #: "draining" and the workers go on serving, so that a load balancer checking it marks
    #: this host down before its connections close (HAProxy: at least ``inter`` × ``fall``
    #: plus one check's ``timeout check``); 0: drain at once. Without ``[metrics] address``
    #: nothing can see it, so there is no wait. A second SIGTERM/SIGINT ends the wait
    leave_pool: float = 0.0
    #: every worker polls each listener's one socket, and takes a new connection only if no
    #: live worker has fewer open (Postfix's few, long connections then split evenly); a
    #: busier worker leaves it to the others at most this many seconds (a fifth of it when
    #: the less-loaded worker is not heard from: stalled, or dead), then takes it; 0: any
    #: worker takes any connection
    accept_wait: float = 0.1
    #: a worker whose event loop has not ticked for this many seconds is replaced
    heartbeat_timeout: float = 10.0
    #: a front-end connection with no data and nothing in flight for this long is closed
    #: (Postfix closes idle policy connections itself after 300 s)
    idle_timeout: float = 600.0
    #: a request (a policy request up to its empty line, one MessagePack-RPC message, one
    #: milter packet) must arrive whole this many seconds after its first byte, or the
    #: connection is closed; the decision's time does not count. An MTA writes a request at
    #: once (a policy request is under 1 KiB, a milter packet at most 1 MiB); 30 s is a 2 MiB
    #: message at 70 KB/s, and well inside Postfix's smtpd_policy_service_timeout (100 s), so
    #: a client we give up on still has time to retry
    request_timeout: float = 30.0
    #: connections open at once per listener in each worker; more are accepted and closed at
    #: once (a client then tries another worker or server, better than waiting in the queue).
    #: Postfix runs at most 100 smtpd processes per MTA (default_process_limit), each with one
    #: connection to a policy service or milter: 1000 serves ten such MTAs on one worker, and
    #: stays under the common descriptor limit of 1024 (nofile), leaving room for DNS sockets,
    #: the cache and the logs. Raise both together; 0: no cap
    max_connections: int = 1000
    #: bytes one worker's connections may hold, together, in requests begun and not yet
    #: complete; past it the connection holding the most is closed. Requests normally arrive
    #: in one read and hold nothing for long: 64 MiB is 32 maximal (2 MiB) MessagePack-RPC
    #: messages at once, while 1,000 half-sent ones would otherwise hold 2 GB; 0: no budget
    max_unfinished_bytes: int = 64 * 1024 * 1024

    def check(self, path: str) -> None:
        """:raises ConfigError: a worker count outside 0 to 256, a non-positive period, syslog
        without a socket, a negative cap, budget, leave_pool or accept_wait"""
        if self.workers < 0 or self.workers > 256:
            raise ConfigError(f"{path}.workers: must be 0 (one per CPU) to 256")
        if self.log_file == SYSLOG and not self.syslog_socket:
            raise ConfigError(f'{path}.syslog_socket: must name the syslog socket when log_file = "syslog"')
        for name in ("grace", "heartbeat_timeout", "idle_timeout", "request_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{path}.{name}: must be positive")
        if self.leave_pool < 0:
            raise ConfigError(f"{path}.leave_pool: must be 0 (drain at once) or more")
        if self.accept_wait < 0:
            raise ConfigError(f"{path}.accept_wait: must be 0 (any worker takes any connection) or more")
        for name in ("max_connections", "max_unfinished_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}: must be 0 (none) or more")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    #: the shared on-host layer (LMDB in the state dir) under each worker's memory cache
    shared: bool = True
    #: its size bound; when full, expired and then oldest entries go
    size_mb: int = 256

    def check(self, path: str) -> None:
        """:raises ConfigError: a size below 1 MB"""
        if self.size_mb < 1:
            raise ConfigError(f"{path}.size_mb: must be at least 1")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    #: HTTP address of /metrics and /healthz (Prometheus); empty disables
    address: str = "127.0.0.1:10039"
    #: per-process metric files (wiped at start; tmpfs is best); empty: <state_dir>/metrics
    dir: str = ""

    def check(self, path: str) -> None:
        """:raises ConfigError: an address that is not ``HOST:PORT``"""
        if not self.address:
            return
        try:
            if parse_listen(self.address)[0] != "tcp":
                raise ValueError("must be HOST:PORT")
        except ValueError as e:
            raise ConfigError(f"{path}.address: {e}") from None
