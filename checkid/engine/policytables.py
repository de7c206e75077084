"""The contract of the policy file's tables, checked when the file loads.

``METHOD_LIST``, ``TRUSTED_SERVICES``, ``THRESHOLDS`` and ``REJECT_STATUS`` are data the
flow compares against on every decision; a table it cannot use (``"accept_avg": "six"``, a
misspelt key) would otherwise surface as a ``451 4.3.5`` on every message. A table that
breaks its contract is refused like a file that does not compile. A policy that does not
define a table does not use it, and is not asked for it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from checkid.engine.checks.reputation import THRESHOLD_KEYS

#: a trusted service's grade scores (docs/policy.md)
SCORE_RANGE = (0.0, 9.0)
#: thresholds compare with scores; -1 ("never reject") and 10 ("never accept") are the ends
THRESHOLD_RANGE = (-1.0, 10.0)
#: record statuses are 1..9 (registry.py); 10 means no record may lead to REJECT
STATUS_RANGE = (1, 10)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _method_list(table: Any) -> str | None:
    if not isinstance(table, dict):
        return "must map a method to (order, max queries)"
    for method, value in table.items():
        if not isinstance(method, str) or not method:
            return f"{method!r} is not a method name"
        if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(_count(v) for v in value)):
            return f"{method}: want (order, max queries), two integers of 0 or more, not {value!r}"
    return None


def _trusted_services(table: Any) -> str | None:
    if not isinstance(table, dict):
        return "must map a service to {grade: score, 'Wt': weight}"
    low, high = SCORE_RANGE
    for service, grades in table.items():
        if not isinstance(service, str) or not isinstance(grades, dict):
            return f"{service!r}: must map a service to {{grade: score, 'Wt': weight}}"
        for grade, value in grades.items():
            if not isinstance(grade, str):
                return f"{service}: grade {grade!r} is not text"
            if grade in ("Wt", "Scale"):
                if not _number(value) or value <= 0:
                    return f"{service}: {grade} must be a number above 0, not {value!r}"
            elif not _number(value) or not low <= value <= high:
                return f"{service}: grade {grade!r} must score {low:g}..{high:g}, not {value!r}"
    return None


def _thresholds(table: Any) -> str | None:
    if not isinstance(table, dict):
        return f"must map {', '.join(THRESHOLD_KEYS)} to numbers"
    for key in table:
        if key not in THRESHOLD_KEYS:
            return f"unknown key {key!r} (the keys are {', '.join(THRESHOLD_KEYS)})"
    low, high = THRESHOLD_RANGE
    for key in THRESHOLD_KEYS:
        if key not in table:
            return f"{key} is missing"
        value = table[key]
        if not _number(value) or not low <= value <= high:
            return f"{key} must be a number {low:g}..{high:g}, not {value!r}"
    return None


def _reject_status(value: Any) -> str | None:
    low, high = STATUS_RANGE
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        return f"must be an integer {low}..{high}, not {value!r}"
    return None


TABLES: dict[str, Callable[[Any], str | None]] = {
    "METHOD_LIST": _method_list,
    "TRUSTED_SERVICES": _trusted_services,
    "THRESHOLDS": _thresholds,
    "REJECT_STATUS": _reject_status,
}


def problems(namespace: dict[str, Any]) -> list[str]:
    """``"TABLE: what is wrong"`` for every table of a policy module's namespace that breaks
    its contract (empty when all are usable)."""
    found = []
    for name, check in TABLES.items():
        if name in namespace:
            problem = check(namespace[name])
            if problem is not None:
                found.append(f"{name}: {problem}")
    return found
