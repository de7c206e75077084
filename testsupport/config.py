"""Engine configurations for tests and benchmarks: the test DNS server, short timeouts."""
from __future__ import annotations

import dataclasses
from typing import Any

from checkid.config import Config, DnsConfig, RegistryConfig
from testsupport.dnsserver import TestDnsServer


def base_config(server: TestDnsServer, **sections: Any) -> Config:
    """A Config that asks only ``server``, with short timeouts, and ``sections`` on top."""
    config = Config(
        dns=DnsConfig(nameservers=(server.address,), timeout=0.4, decision_timeout=3.0),
        registry=RegistryConfig(zone="registry.test"),
    )
    return dataclasses.replace(config, **sections)
