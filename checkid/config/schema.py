"""The whole schema: :class:`Config`, one field per section, and the checks that span sections.

The sections live beside their owners' needs (:mod:`.engine`, :mod:`.frontends`,
:mod:`.runtime`, :mod:`.fleet`) and each checks its own values; ``Config()`` is the embedded default.
"""
from __future__ import annotations

from dataclasses import dataclass

from checkid.config.engine import (BlacklistConfig, DkimConfig, DnsConfig, HeadersConfig, IdentityConfig, PolicyConfig,
                                   PrescreenConfig, RegistryConfig, ReputationConfig)
from checkid.config.fleet import FleetConfig
from checkid.config.frontends import DEFAULT_LISTEN, ListenConfig, MilterConfig, PostfixPolicyConfig, SmtpConfig
from checkid.config.runtime import CacheConfig, MetricsConfig, ServerConfig
from checkid.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[ListenConfig, ...] = DEFAULT_LISTEN
    server: ServerConfig = ServerConfig()
    cache: CacheConfig = CacheConfig()
    metrics: MetricsConfig = MetricsConfig()
    postfix_policy: PostfixPolicyConfig = PostfixPolicyConfig()
    milter: MilterConfig = MilterConfig()
    smtp: SmtpConfig = SmtpConfig()
    dns: DnsConfig = DnsConfig()
    registry: RegistryConfig = RegistryConfig()
    identity: IdentityConfig = IdentityConfig()
    prescreen: PrescreenConfig = PrescreenConfig()
    blacklist: BlacklistConfig = BlacklistConfig()
    reputation: ReputationConfig = ReputationConfig()
    dkim: DkimConfig = DkimConfig()
    policy: PolicyConfig = PolicyConfig()
    headers: HeadersConfig = HeadersConfig()
    fleet: FleetConfig = FleetConfig()

    def check_across(self) -> None:
        """The checks no single section can make (each section checks itself).

        :raises ConfigError: two listeners on one address
        """
        addresses = [listen.address for listen in self.listen]
        for i, address in enumerate(addresses):
            if address in addresses[:i]:
                raise ConfigError(f"listen[{i}].address: {address} is used twice")
