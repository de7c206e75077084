"""Ratings to scores: each trusted service's grade maps to a score with a weight, and the
min, max and weighted average decide against thresholds (per recipient when configured).

``TRUSTED_SERVICES`` (in the policy file) maps a service to its grade table and weight:
``{'S1': {'A': 9, 'B': 7, 'C': 5, 'D': 0, 'Wt': 5}}``. Integer grades (up to 3 digits)
are looked up as text first (``'87': 8``); a table with ``'Scale': f`` scores an integer
grade g as ``g * f``. Services not in the table, and grades it does not know, are ignored.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkid.errors import ConfigError
from checkid.engine.checks.registry import Rating

#: the threshold names a recipient table may override
THRESHOLD_KEYS = ("accept_avg", "accept_min", "reject_max")


@dataclass(frozen=True, slots=True)
class Score:
    min: float
    max: float
    #: weighted average over the trusted services that rated the sender
    avg: float
    #: (service, grade, score) for every rating that counted
    used: tuple[tuple[str, str, float], ...]


def score(ratings: Iterable[Rating], trusted: Mapping[str, Mapping[str, Any]]) -> Score | None:
    """Score ``ratings`` through ``trusted``; None when no trusted service rated the sender."""
    used: list[tuple[str, str, float]] = []
    total = weights = 0.0
    for rating in ratings:
        table = trusted.get(rating.service)
        if table is None:
            continue
        value = table.get(rating.grade)
        if value is None and rating.grade.isdigit() and "Scale" in table:
            value = int(rating.grade) * table["Scale"]
        if value is None:
            continue
        weight = float(table.get("Wt", 1))
        used.append((rating.service, rating.grade, float(value)))
        total += weight * value
        weights += weight
    if not used:
        return None
    scores = [s for _, _, s in used]
    return Score(min(scores), max(scores), total / weights if weights else sum(scores) / len(scores), tuple(used))


class RecipientThresholds:
    """Per-recipient threshold overrides from a table file.

    One entry per line: ``KEY name=value ...`` where KEY is an address (``user@example.org``),
    ``@example.org`` or ``example.org`` (both the domain), and names are
    ``accept_avg``, ``accept_min``, ``reject_max``. ``#`` starts a comment.
    """

    def __init__(self, table: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.table: dict[str, dict[str, float]] = {k: dict(v) for k, v in (table or {}).items()}

    @classmethod
    def load(cls, path: str) -> "RecipientThresholds":
        """:raises ConfigError: naming the file and line"""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        table: dict[str, dict[str, float]] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].split()
            if not line:
                continue
            key, values = line[0].lower(), {}
            for item in line[1:]:
                name, sep, value = item.partition("=")
                try:
                    if not sep or name not in THRESHOLD_KEYS:
                        raise ValueError
                    values[name] = float(value)
                except ValueError:
                    raise ConfigError(f"{path}:{number}: bad setting {item!r} "
                                      f"(want {'|'.join(THRESHOLD_KEYS)}=NUMBER)") from None
            if not values:
                raise ConfigError(f"{path}:{number}: no thresholds for {key!r}")
            table[key[1:] if key.startswith("@") else key] = values
        return cls(table)

    def key_for(self, rcpt: str) -> str:
        """The table entry that applies to ``rcpt`` ("" for none): recipients with the same
        entry share a decision."""
        address = rcpt.strip("<>").lower()
        if address in self.table:
            return address
        domain = address.rpartition("@")[2]
        return domain if domain in self.table else ""

    def for_recipients(self, defaults: Mapping[str, float], rcpts: Iterable[str]) -> dict[str, float]:
        """``defaults`` overridden for these recipients; with several, the strictest wins."""
        merged = dict(defaults)
        if not self.table:
            return merged
        overrides = []
        for rcpt in rcpts:
            address = rcpt.strip("<>").lower()
            entry = self.table.get(address) or self.table.get(address.rpartition("@")[2])
            if entry is not None:
                overrides.append(entry)
        if overrides:
            for name in THRESHOLD_KEYS:
                values = [o[name] for o in overrides if name in o]
                if values:
                    merged[name] = max(values)
        return merged
