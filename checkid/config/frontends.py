"""The sections the front-ends read: listen (one table per listener), postfix_policy and
milter, each with the value checks its type cannot express.

Each section's ``check(path)`` raises :class:`ConfigError` naming the full key under ``path``
(``listen[1].mode: ...``); checks across listeners live with :class:`~checkid.config.Config`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from checkid.config.addresses import parse_listen
from checkid.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """One listener: a protocol on a TCP address or a unix socket."""

    protocol: Literal["policy", "msgpack-rpc", "milter"]
    #: ``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:PATH``
    address: str
    #: policy only: answer one request per connection, then close (Exim ``${readsocket}``)
    oneshot: bool = False
    #: unix sockets: permissions (octal text), and owner/group ("" keeps checkid's user)
    mode: str = "0660"
    owner: str = ""
    group: str = ""

    def check(self, path: str) -> None:
        """:raises ConfigError: a bad address or mode, ``oneshot`` on a protocol other than policy"""
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
