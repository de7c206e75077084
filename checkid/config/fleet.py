"""``[fleet]``: state shared by every checkid host through Redis (learned heavy senders, flushes).

Off by default (no ``redis`` and no ``sentinels``): nothing changes, and the ``redis``
package is never imported. ``check(path)`` raises :class:`ConfigError` naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass

from checkid.config.addresses import parse_hostport
from checkid.errors import ConfigError

_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True)
class FleetConfig:
    #: the Redis server, ``redis://[:password@]host:port/db`` (``rediss://`` for TLS) or
    #: ``unix:///path/redis.sock?db=0``; empty, with no ``sentinels``: the fleet is off
    redis: str = ""
    #: Sentinel addresses (``host:port``) that name the primary of ``service``, instead of ``redis``
    sentinels: tuple[str, ...] = ()
    #: the Sentinel service (``sentinel monitor NAME ...``)
    service: str = "mymaster"
    #: the Redis database with ``sentinels``
    db: int = 0
    #: milliseconds one Redis call may take; past it the worker carries on with what it knows
    #: locally and counts ``checkid_fleet_fallbacks_total``. Decisions never wait on Redis
    budget_ms: float = 5.0
    #: seconds of the sliding window rejections are counted over (in ``buckets`` steps)
    window: int = 600
    #: steps of the window: a rejection leaves the count between window - window/buckets
    #: and window seconds after it was made
    buckets: int = 10
    #: rejections of one client address within the window, counted across the fleet, that
    #: block it at every host's pre-screen; 0: no block by address
    block_after: int = 0
    #: rejections of one /24 (IPv4) or /64 (IPv6) within the window that block the whole
    #: prefix; 0: no block by prefix
    block_after_prefix: int = 0
    #: seconds a learned block lasts
    block_seconds: int = 3600
    #: the start of every key and of the channel, so several fleets (or tests) share one Redis
    key_prefix: str = "checkid:"
    #: rejections waiting to be sent when Redis is slow; more are dropped and counted
    queue_size: int = 10_000
    #: blocks a worker holds; past it no new block is learned (counted as a fallback)
    max_blocks: int = 1_000_000

    @property
    def enabled(self) -> bool:
        return bool(self.redis or self.sentinels)

    def check(self, path: str) -> None:
        """:raises ConfigError: both ``redis`` and ``sentinels``, an unknown URL scheme, a bad
        sentinel address, a non-positive budget, window, buckets or block time, a negative
        threshold, an empty prefix with the fleet on"""
        if self.redis and self.sentinels:
            raise ConfigError(f"{path}.redis: give either redis or sentinels, not both")
        if self.redis and not self.redis.startswith(_SCHEMES):
            raise ConfigError(f"{path}.redis: must start with {', '.join(_SCHEMES)} (got {self.redis[:40]!r})")
        for i, address in enumerate(self.sentinels):
            try:
                parse_hostport(address, 26379)
            except ValueError as e:
                raise ConfigError(f"{path}.sentinels[{i}]: {e}") from None
        if self.sentinels and not self.service:
            raise ConfigError(f"{path}.service: must name the Sentinel service with sentinels")
        if self.db < 0:
            raise ConfigError(f"{path}.db: must not be negative")
        for name in ("budget_ms", "window", "buckets", "block_seconds", "queue_size", "max_blocks"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{path}.{name}: must be positive")
        if self.budget_ms > 1000:
            raise ConfigError(f"{path}.budget_ms: at most 1000: a decision never waits on Redis, "
                              "but a slow call holds back the others")
        if self.buckets > self.window:
            raise ConfigError(f"{path}.buckets: must not exceed {path}.window (one-second steps at least)")
        for name in ("block_after", "block_after_prefix"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}: must be 0 (off) or more")
        if self.enabled and not self.key_prefix:
            raise ConfigError(f"{path}.key_prefix: must not be empty")
