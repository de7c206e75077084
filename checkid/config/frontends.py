"""The sections the front-ends read: listen (one table per listener), postfix_policy, milter
and smtp, each with the value checks its type cannot express.

Each section's ``check(path)`` raises :class:`ConfigError` naming the full key under ``path``
(``listen[1].mode: ...``); checks across listeners live with :class:`~checkid.config.Config`.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from checkid.config.addresses import parse_listen
from checkid.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """One listener: a protocol on a TCP address or a unix socket."""

    protocol: Literal["policy", "msgpack-rpc", "milter", "smtp"]
    #: ``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:PATH``
    address: str
    #: policy only: answer one request per connection, then close (Exim ``${readsocket}``)
    oneshot: bool = False
    #: unix sockets: permissions (octal text), and owner/group ("" keeps checkid's user)
    mode: str = "0660"
    owner: str = ""
    group: str = ""
    #: smtp only: the MTA behind the front door, ``IP:PORT``, ``[IPv6]:PORT`` or ``unix:PATH``
    backend: str = ""
    #: smtp only: how the backend learns the client's address (XCLIENT, a PROXY v2 header,
    #: or only checkid's own ``Received:`` line)
    backend_client: Literal["xclient", "proxy", "none"] = "xclient"
    #: smtp only: every connection starts with a PROXY v1/v2 header (a load balancer in front)
    proxy_protocol: bool = False
    #: smtp only: the networks a PROXY header is taken from (required with ``proxy_protocol``)
    proxy_hosts: tuple[str, ...] = ()

    def check(self, path: str) -> None:
        """:raises ConfigError: a bad address or mode, ``oneshot`` on a protocol other than
        policy, an smtp listener without a backend, front-door keys on another protocol"""
        try:
            parse_listen(self.address)
        except ValueError as e:
            raise ConfigError(f"{path}.address: {e}") from None
        try:
            if not 0 <= int(self.mode, 8) <= 0o777:
                raise ValueError
        except ValueError:
            raise ConfigError(f"{path}.mode: want octal permissions like \"0660\", got {self.mode!r}") from None
        if self.oneshot and self.protocol != "policy":
            raise ConfigError(f"{path}.oneshot: only for protocol \"policy\"")
        if self.protocol != "smtp":
            for key, value in (("backend", self.backend), ("proxy_protocol", self.proxy_protocol),
                               ("proxy_hosts", self.proxy_hosts)):
                if value:
                    raise ConfigError(f"{path}.{key}: only for protocol \"smtp\"")
            return
        if not self.backend:
            raise ConfigError(f"{path}.backend: required for protocol \"smtp\" (the MTA behind it, IP:PORT)")
        try:
            parse_listen(self.backend)
        except ValueError as e:
            raise ConfigError(f"{path}.backend: {e}") from None
        if self.backend == self.address:
            raise ConfigError(f"{path}.backend: the front door cannot relay to itself")
        for i, network in enumerate(self.proxy_hosts):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(f"{path}.proxy_hosts[{i}]: not a network: {network!r}") from None
        if self.proxy_protocol and not self.proxy_hosts:
            raise ConfigError(f"{path}.proxy_hosts: required with proxy_protocol (only trusted proxies may "
                              "send the header)")


#: the listeners of a configuration that names none
DEFAULT_LISTEN = (
    ListenConfig("policy", "127.0.0.1:10030"),
    ListenConfig("msgpack-rpc", "127.0.0.1:10031"),
)


@dataclass(frozen=True, slots=True)
class PostfixPolicyConfig:
    #: the protocol_state at which checkid decides; other states are answered DUNNO
    decide_at: Literal["CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE"] = "RCPT"
    #: ACCEPT: ``PREPEND`` the Authent header, or answer ``OK`` / ``DUNNO``
    accept: Literal["prepend", "ok", "dunno"] = "prepend"
    #: FILTER: ``prepend`` the header, ``dunno``, or a ``transport:nexthop`` for ``FILTER``
    filter: str = "prepend"
    #: TEMPFAIL: the 4xx ``reply``, or ``defer_if_permit``
    tempfail: Literal["reply", "defer_if_permit"] = "reply"

    def check(self, path: str) -> None:
        """:raises ConfigError: PREPEND at END-OF-MESSAGE, a ``filter`` of no known form"""
        if self.decide_at == "END-OF-MESSAGE" and "prepend" in (self.accept, self.filter):
            raise ConfigError(f"{path}: PREPEND is not allowed at END-OF-MESSAGE (Postfix "
                              "smtpd_end_of_data_restrictions); set accept and filter to \"dunno\" or \"ok\"")
        filt = self.filter
        if filt not in ("prepend", "dunno") and (":" not in filt or any(c.isspace() for c in filt)):
            raise ConfigError(f"{path}.filter: want \"prepend\", \"dunno\" or transport:nexthop, got {filt!r}")


@dataclass(frozen=True, slots=True)
class MilterConfig:
    #: decide at MAIL FROM, or at the first RCPT TO (recipients with their own thresholds
    #: are always checked at RCPT)
    decide_at: Literal["MAIL", "RCPT"] = "MAIL"
    #: quarantine FILTERed mail with this reason (Postfix: hold queue); "" = do not
    quarantine: str = ""
    #: seconds between PROGRESS packets while a decision at end of message is pending
    progress_interval: float = 5.0

    def check(self, path: str) -> None:
        """:raises ConfigError: a PROGRESS interval outside 0.5 to 60 seconds"""
        if not 0.5 <= self.progress_interval <= 60:
            raise ConfigError(f"{path}.progress_interval: must be 0.5 to 60 seconds")


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """The SMTP front door's limits and timeouts (every smtp listener shares them)."""

    #: the name in the banner, the EHLO reply and checkid's ``Received:`` ("" = this host's name)
    hostname: str = ""
    #: RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients per message
    max_rcpts: int = 100
    #: unknown commands, syntax errors and bad lines before a 421 (Postfix smtpd_hard_error_limit)
    max_errors: int = 20
    #: commands per session before a 421
    max_commands: int = 1000
    #: message size bound in octets, advertised with SIZE (RFC 1870; the backend's when smaller)
    max_message: int = 10_240_000
    #: content held while an end-of-data decision is due (the part that decision sees)
    hold: int = 1024 * 1024
    #: a bare CR or LF inside DATA: ``normalize`` to CRLF, or ``reject`` the message
    bare_lf: Literal["normalize", "reject"] = "normalize"
    #: RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for the next command
    idle_timeout: float = 300.0
    #: connect and per-command deadline for the backend (Postfix smtpd_proxy_timeout: 100 s)
    backend_timeout: float = 100.0
    #: deadline for the backend's reply to the final dot (RFC 5321 §4.5.3.2.6: the client
    #: waits 10 minutes; ours must end well before)
    data_timeout: float = 300.0
    #: a whole session's deadline, however active (a slow client holds a backend connection
    #: too); at least the RFC 5321 §4.5.3.2 client timeouts of one transaction (5 + 5 + 5 + 2
    #: minutes, then 10 for the end of data, 27 in all), rounded up to 30 minutes
    session_timeout: float = 3600.0
    #: open front-door sessions per worker before new ones get ``421 4.7.0`` (RFC 5321 §3.8 lets
    #: a server refuse with 421 and close); each holds two descriptors, client and backend, so
    #: 500 fits the common 1024 open-file limit (the systemd unit raises it: so may this)
    max_connections: int = 500
    #: open sessions from one client address per worker before ``421 4.7.0`` (0 = no cap;
    #: Postfix's smtpd_client_connection_count_limit is 50 too)
    max_per_ip: int = 50
    #: STARTTLS for clients (RFC 3207): the certificate chain and its key, PEM files readable
    #: by checkid's user; offered in EHLO only when both are set
    tls_cert: str = ""
    tls_key: str = ""
    #: STARTTLS to the backend when its EHLO offers it: ``no`` (loopback), ``opportunistic``
    #: (try, plaintext if not offered or the handshake fails), ``required`` (no TLS, no relay);
    #: the backend's certificate is not verified (Postfix's ``may`` and ``encrypt`` levels)
    backend_tls: Literal["no", "opportunistic", "required"] = "no"

    def check(self, path: str) -> None:
        """:raises ConfigError: limits below the RFC minimums, timeouts out of range, half a
        TLS key pair"""
        if any(c.isspace() for c in self.hostname):
            raise ConfigError(f"{path}.hostname: no spaces in a host name")
        if self.max_rcpts < 100:
            raise ConfigError(f"{path}.max_rcpts: RFC 5321 §4.5.3.1.8 requires at least 100")
        if self.max_errors < 1 or self.max_commands < 10:
            raise ConfigError(f"{path}: max_errors must be at least 1 and max_commands at least 10")
        if self.max_message < 64 * 1024:
            raise ConfigError(f"{path}.max_message: RFC 5321 §4.5.3.1.7 requires at least 64 KiB")
        if not 0 <= self.hold <= 64 * 1024 * 1024:
            raise ConfigError(f"{path}.hold: 0 to 64 MiB")
        if not 300 <= self.idle_timeout <= 3600:
            raise ConfigError(f"{path}.idle_timeout: RFC 5321 §4.5.3.2.7 asks at least 300 s (at most 3600)")
        if not 1 <= self.backend_timeout <= 300:
            raise ConfigError(f"{path}.backend_timeout: 1 to 300 seconds (RFC 5321 §4.5.3.2)")
        if not 1 <= self.data_timeout <= 540:
            raise ConfigError(f"{path}.data_timeout: 1 to 540 seconds, within the client's 10 minutes "
                              "(RFC 5321 §4.5.3.2.6)")
        if not 1800 <= self.session_timeout <= 86400:
            raise ConfigError(f"{path}.session_timeout: 1800 to 86400 seconds (one transaction may take 27 "
                              "minutes under RFC 5321 §4.5.3.2)")
        if self.max_connections < 1 or self.max_per_ip < 0:
            raise ConfigError(f"{path}: max_connections must be at least 1 and max_per_ip at least 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(f"{path}.{'tls_key' if self.tls_cert else 'tls_cert'}: STARTTLS needs both "
                              "tls_cert and tls_key")
