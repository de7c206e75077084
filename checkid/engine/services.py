"""What a decision's :class:`~checkid.engine.context.Context` works with: the engine's
long-lived parts, built once per process by the engine and shared by every decision.

A plain value, so the context needs no import of the engine (which builds it).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from checkid.config import Config
from checkid.engine.checks.dkim import DkimVerifier
from checkid.engine.checks.prescreen import IPScreen
from checkid.engine.checks.reputation import RecipientThresholds
from checkid.engine.checks.spfcheck import SpfChecker
from checkid.engine.dns.client import DnsClient
from checkid.engine.fleet import Fleet


@dataclass(frozen=True, slots=True)
class Services:
    config: Config
    dns: DnsClient
    #: allow list, local block lists and the pre-screen DNSBLs
    prescreen: IPScreen
    #: the aggressive IP lists, for mail that did not authenticate
    blacklist: IPScreen
    spf: SpfChecker
    #: DKIM: body hashes while a message streams in, and the signatures' verification
    dkim: DkimVerifier
    #: the per-recipient threshold overrides
    thresholds: RecipientThresholds
    #: plain counters keyed ``(name, *labels)`` (checkid.runtime.metrics.COUNTERS)
    counts: Counter[tuple[str, ...]]
    #: the name this host gives itself in ``Authentication-Results``
    authserv_id: str
    #: the fleet state on Redis (``[fleet]``), None when off
    fleet: Fleet | None = None
