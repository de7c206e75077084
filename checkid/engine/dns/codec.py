"""The value codec of the shared cache: what the engine caches (DNS answers, SPF outcomes)
as plain msgpack-able lists, and back. Never pickle: a cache file is data, not code.

The runtime's LMDB layer stores whatever :func:`encode_value` gives and knows no mail
type; a new cached type gets its tag here.
"""
from __future__ import annotations

from typing import Any

from checkid.engine.checks.spfcheck import SpfOutcome
from checkid.engine.dns.client import DnsAnswer, Outcome
from checkid.engine.result import Result

_DNS, _SPF = 1, 2


def encode_value(value: Any) -> list[Any]:
    """:raises TypeError: for a value the shared cache does not hold"""
    if isinstance(value, DnsAnswer):
        return [_DNS, value.outcome.value, list(value.records), value.ttl]
    if isinstance(value, SpfOutcome):
        return [_SPF, value.result.value, value.explanation, value.received_spf]
    raise TypeError(f"no shared-cache encoding for {type(value).__name__}")


def decode_value(data: list[Any]) -> Any:
    """:raises ValueError: for an unknown tag or result (``TypeError``/``IndexError`` for
    a malformed list); the caller treats any of them as a miss"""
    if data[0] == _DNS:
        # msgpack gives lists back: TXT chunk tuples and MX (preference, exchange) pairs
        records = tuple(tuple(r) if isinstance(r, list) else r for r in data[2])
        return DnsAnswer(Outcome(data[1]), records, data[3])
    if data[0] == _SPF:
        # upper() also reads entries written while SPF results were spelt in lower case
        return SpfOutcome(Result(data[1].upper()), data[2], data[3])
    raise ValueError(f"unknown shared-cache value tag {data[0]!r}")
