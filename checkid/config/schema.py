"""Configuration: one TOML file, every key with a built-in default.

``load(path)`` returns a frozen :class:`Config` or raises :class:`ConfigError` naming the key
at fault (``dns.timeout: expected a number, got 'soon'``). ``Config()`` is the embedded default.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from checkid.errors import ConfigError

#: Spamhaus ZEN return codes (reference/anchors.md §6); 127.255.255.0/24 are errors, never listings.
ZEN_CODES: dict[str, str] = {
    "127.0.0.2": "SBL",
    "127.0.0.3": "SBL-CSS",
    "127.0.0.4": "XBL",
    "127.0.0.5": "XBL",
    "127.0.0.6": "XBL",
    "127.0.0.7": "XBL",
    "127.0.0.9": "SBL-DROP",
    "127.0.0.10": "PBL",
    "127.0.0.11": "PBL",
    "127.0.0.30": "BCL",
}


@dataclass(frozen=True, slots=True)
class DnsConfig:
    #: ``IP`` or ``IP:PORT`` (``[v6]:PORT``) entries; empty means the system's resolv.conf
    nameservers: tuple[str, ...] = ()
    #: seconds one lookup may take, all retries included
    timeout: float = 2.0
    #: seconds a whole decision may take; keep it below the MTA's own timeout (Sendmail's
    #: milter read timeout is 10 s, Exim's ${readsocket} default 5 s: docs/exim.md sets 10 s)
    decision_timeout: float = 8.0
    #: entries in the per-process answer cache
    cache_size: int = 100_000
    #: TTL clamps in seconds for positive answers
    min_ttl: int = 5
    max_ttl: int = 86_400
    #: clamp for negative answers (NXDOMAIN/NODATA, TTL from the SOA minimum, RFC 2308)
    max_negative_ttl: int = 3_600


@dataclass(frozen=True, slots=True)
class DnsList:
    """A DNS block list (DNSBL) queried with the reversed client address."""

    #: the list's zone, e.g. ``zen.spamhaus.org``
    zone: str
    #: name shown in replies and logs; defaults to the zone
    name: str = ""
    #: answer address -> sub-list or reason; empty means any 127.0.0.0/24 answer lists
    codes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PrescreenConfig:
    #: networks accepted at once (own networks, trusted relays)
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: local block lists: plain CIDR lists or rbldnsd ip4set/ip4trie/ip6trie files
    block_files: tuple[str, ...] = ()
    #: DNSBLs for heavily spamming IPs; a hit rejects before any registry query
    dnsbl: tuple[DnsList, ...] = (DnsList(zone="zen.spamhaus.org", name="Spamhaus ZEN", codes=ZEN_CODES),)


@dataclass(frozen=True, slots=True)
class BlacklistConfig:
    """The aggressive IP lists, applied only to mail that did not authenticate."""

    dnsbl: tuple[DnsList, ...] = ()
    block_files: tuple[str, ...] = ()
    #: what a hit leads to
    action: Literal["filter", "reject"] = "filter"


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    #: the registry is queried as TXT ``<ID>.<zone>``
    zone: str = "registry.open-mail.org"


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    #: where the identity comes from when no ``ID`` was declared, in order
    fallback: tuple[Literal["helo", "mail_from"], ...] = ("helo", "mail_from")


@dataclass(frozen=True, slots=True)
class RatingService:
    """A DNS rating service: an IP- or ID-keyed zone whose answers map to grades."""

    #: the service name used in ratings and TRUSTED_SERVICES, e.g. ``Q1``
    name: str
    zone: str
    #: what the query is keyed on: the reversed client IP, or the identity
    key: Literal["ip", "id"] = "ip"
    #: answer address -> grade (a letter or an integer of up to 3 digits)
    grades: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReputationConfig:
    #: DNS rating services, asked in addition to the registry record's ratings
    dns: tuple[RatingService, ...] = ()
    #: file of per-recipient threshold overrides (address, @domain or domain per line)
    recipient_thresholds: str = ""


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    #: the operator's policy file; empty means the embedded ``checkid/policy/default.py``
    path: str = ""
    #: what a DNS temporary error leads to: a 4xx, or fail open to the spam filter
    on_temperror: Literal["tempfail", "filter"] = "tempfail"
    #: seconds between checks of the policy file for edits (each worker reloads it)
    reload_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class HeadersConfig:
    #: also add RFC 8601 ``Authentication-Results``
    authentication_results: bool = False
    #: also add RFC 7208 ``Received-SPF`` when SPF ran
    received_spf: bool = False
    #: the authserv-id / receiver name; empty means this host's name
    authserv_id: str = ""


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


@dataclass(frozen=True, slots=True)
class MilterConfig:
    #: decide at MAIL FROM, or at the first RCPT TO (recipients with their own thresholds
    #: are always checked at RCPT)
    decide_at: Literal["MAIL", "RCPT"] = "MAIL"
    #: quarantine FILTERed mail with this reason (Postfix: hold queue); "" = do not
    quarantine: str = ""
    #: seconds between PROGRESS packets while a decision at end of message is pending
    progress_interval: float = 5.0


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
    #: log file, reopened on SIGUSR1; empty means standard error
    log_file: str = ""
    #: seconds workers get to finish in-flight requests on SIGTERM/SIGINT
    grace: float = 10.0
    #: a worker whose event loop has not ticked for this many seconds is replaced
    heartbeat_timeout: float = 10.0
    #: a front-end connection with no data and nothing in flight for this long is closed
    #: (Postfix closes idle policy connections itself after 300 s)
    idle_timeout: float = 600.0


@dataclass(frozen=True, slots=True)
class CacheConfig:
    #: the shared on-host layer (LMDB in the state dir) under each worker's memory cache
    shared: bool = True
    #: its size bound; when full, expired and then oldest entries go
    size_mb: int = 256


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    #: HTTP address of /metrics and /healthz (Prometheus); empty disables
    address: str = "127.0.0.1:10039"
    #: per-process metric files (wiped at start; tmpfs is best); empty: <state_dir>/metrics
    dir: str = ""


DEFAULT_LISTEN = (
    ListenConfig("policy", "127.0.0.1:10030"),
    ListenConfig("msgpack-rpc", "127.0.0.1:10031"),
)


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[ListenConfig, ...] = DEFAULT_LISTEN
    server: ServerConfig = ServerConfig()
    cache: CacheConfig = CacheConfig()
    metrics: MetricsConfig = MetricsConfig()
    postfix_policy: PostfixPolicyConfig = PostfixPolicyConfig()
    milter: MilterConfig = MilterConfig()
    dns: DnsConfig = DnsConfig()
    registry: RegistryConfig = RegistryConfig()
    identity: IdentityConfig = IdentityConfig()
    prescreen: PrescreenConfig = PrescreenConfig()
    blacklist: BlacklistConfig = BlacklistConfig()
    reputation: ReputationConfig = ReputationConfig()
    policy: PolicyConfig = PolicyConfig()
    headers: HeadersConfig = HeadersConfig()


def load(path: str | Path) -> Config:
    """Read and validate a TOML configuration file.

    :raises ConfigError: unreadable file, TOML syntax, unknown key, wrong type or value
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    return from_dict(data, source=str(path))


def from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    """Build a :class:`Config` from parsed TOML. :raises ConfigError: naming the key."""
    try:
        config = _build(Config, data, "")
        _check(config)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return config


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'top level'}: expected a table, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{_join(path, key)}: unknown key")
    kwargs = {key: _convert(value, hints[key], _join(path, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise ConfigError(f"{_join(path, missing[0]) if missing else path}: required key missing") from e


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, allowed))}, got {_show(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected an array, got {_show(value)}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {_show(value)}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, _join(path, str(k))) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{path}: unsupported type")  # not used by the schema
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_show(value)}")
        return value
    raise ConfigError(f"{path}: unsupported type {tp!r}")


def _check(config: Config) -> None:
    """Value checks that a type cannot express."""
    dns = config.dns
    for name in ("timeout", "decision_timeout"):
        if getattr(dns, name) <= 0:
            raise ConfigError(f"dns.{name}: must be positive")
    if dns.timeout > dns.decision_timeout:
        raise ConfigError("dns.timeout: must not exceed dns.decision_timeout")
    for name in ("cache_size", "min_ttl", "max_ttl", "max_negative_ttl"):
        if getattr(dns, name) < 0:
            raise ConfigError(f"dns.{name}: must not be negative")
    if dns.min_ttl > dns.max_ttl:
        raise ConfigError("dns.min_ttl: must not exceed dns.max_ttl")
    for i, ns in enumerate(dns.nameservers):
        try:
            parse_hostport(ns, 53)
        except ValueError as e:
            raise ConfigError(f"dns.nameservers[{i}]: {e}") from None
    for i, listen in enumerate(config.listen):
        try:
            parse_listen(listen.address)
        except ValueError as e:
            raise ConfigError(f"listen[{i}].address: {e}") from None
        try:
            if not 0 <= int(listen.mode, 8) <= 0o777:
                raise ValueError
        except ValueError:
            raise ConfigError(f"listen[{i}].mode: want octal permissions like \"0660\", got {listen.mode!r}") from None
        if listen.oneshot and listen.protocol != "policy":
            raise ConfigError(f"listen[{i}].oneshot: only for protocol \"policy\"")
    addresses = [listen.address for listen in config.listen]
    for i, address in enumerate(addresses):
        if address in addresses[:i]:
            raise ConfigError(f"listen[{i}].address: {address} is used twice")
    server = config.server
    if server.workers < 0 or server.workers > 256:
        raise ConfigError("server.workers: must be 0 (one per CPU) to 256")
    for name in ("grace", "heartbeat_timeout", "idle_timeout"):
        if getattr(server, name) <= 0:
            raise ConfigError(f"server.{name}: must be positive")
    if not 0.5 <= config.milter.progress_interval <= 60:
        raise ConfigError("milter.progress_interval: must be 0.5 to 60 seconds")
    if config.cache.size_mb < 1:
        raise ConfigError("cache.size_mb: must be at least 1")
    if not 0.1 <= config.policy.reload_interval <= 3600:
        raise ConfigError("policy.reload_interval: must be 0.1 to 3600 seconds")
    if config.metrics.address:
        try:
            if parse_listen(config.metrics.address)[0] != "tcp":
                raise ValueError("must be HOST:PORT")
        except ValueError as e:
            raise ConfigError(f"metrics.address: {e}") from None
    pp = config.postfix_policy
    if pp.decide_at == "END-OF-MESSAGE" and "prepend" in (pp.accept, pp.filter):
        raise ConfigError("postfix_policy: PREPEND is not allowed at END-OF-MESSAGE (Postfix "
                          "smtpd_end_of_data_restrictions); set accept and filter to \"dunno\" or \"ok\"")
    filt = config.postfix_policy.filter
    if filt not in ("prepend", "dunno") and (":" not in filt or any(c.isspace() for c in filt)):
        raise ConfigError(f"postfix_policy.filter: want \"prepend\", \"dunno\" or transport:nexthop, got {filt!r}")
    for i, net in enumerate(config.prescreen.allow):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"prescreen.allow[{i}]: not an address or network: {net!r}") from None
    for section in ("prescreen", "blacklist"):
        for i, dnsl in enumerate(getattr(config, section).dnsbl):
            for code in dnsl.codes:
                try:
                    ipaddress.IPv4Address(code)
                except ValueError:
                    raise ConfigError(f"{section}.dnsbl[{i}].codes: not an IPv4 address: {code!r}") from None
    for i, svc in enumerate(config.reputation.dns):
        for code in svc.grades:
            try:
                ipaddress.IPv4Address(code)
            except ValueError:
                raise ConfigError(f"reputation.dns[{i}].grades: not an IPv4 address: {code!r}") from None


def parse_listen(text: str) -> tuple[str, str, int]:
    """``("unix", PATH, 0)`` for ``unix:PATH``, else ``("tcp", HOST, PORT)`` (port required).

    :raises ValueError: with a message fit for the operator
    """
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise ValueError("unix: needs a path")
        return "unix", path, 0
    host, port = parse_hostport(text, 0)
    if port == 0:
        raise ValueError(f"{text!r} needs a port (HOST:PORT, [IPv6]:PORT or unix:PATH)")
    return "tcp", host, port


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """Split ``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address.

    :raises ValueError: with a message fit for the operator
    """
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {whole!r}")
    return int(text)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
