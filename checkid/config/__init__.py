"""Configuration: one TOML file, every key with a built-in default.

The sections sit beside their owners' needs: :mod:`.engine` (dns, registry, identity, prescreen,
blacklist, reputation, dkim, policy, headers), :mod:`.frontends` (listen, postfix_policy, milter, smtp) and
:mod:`.runtime` (server, cache, metrics); :mod:`.schema` joins them in :class:`Config`,
:mod:`.convert` turns TOML into it, and :mod:`.addresses` parses the addresses in it.
"""
from __future__ import annotations

from checkid.config.addresses import parse_hostport, parse_listen
from checkid.config.convert import from_dict, load, read
from checkid.config.engine import (ZEN_CODES, BlacklistConfig, DkimConfig, DnsConfig, DnsList, HeadersConfig, IdentityConfig,
                                   PolicyConfig, PrescreenConfig, RatingService, RegistryConfig, ReputationConfig)
from checkid.config.frontends import DEFAULT_LISTEN, ListenConfig, MilterConfig, PostfixPolicyConfig, SmtpConfig
from checkid.config.runtime import CacheConfig, MetricsConfig, ServerConfig
from checkid.config.schema import Config

__all__ = [
    "Config", "load", "read", "from_dict", "parse_listen", "parse_hostport",
    "DnsConfig", "DnsList", "ZEN_CODES", "PrescreenConfig", "BlacklistConfig", "RegistryConfig", "IdentityConfig",
    "RatingService", "ReputationConfig", "DkimConfig", "PolicyConfig", "HeadersConfig",
    "ListenConfig", "DEFAULT_LISTEN", "PostfixPolicyConfig", "MilterConfig", "SmtpConfig",
    "ServerConfig", "CacheConfig", "MetricsConfig",
]
