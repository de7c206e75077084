"""A per-decision record of what each stage did, for ``checkid query --trace``."""
from __future__ import annotations


class Trace:
    """Collects ``(stage, message)`` lines in order. Pass None instead to trace nothing."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        #: (name, type) this decision started ahead of its need: found in the cache later,
        #: their answers are still this decision's queries
        self.prefetched: set[tuple[str, str]] = set()

    def add(self, stage: str, message: str) -> None:
        self.lines.append((stage, message))

    def source(self, key: tuple[str, str]) -> str:
        """How an answer found in the cache got there: ``[cache]``, or ``[query, prefetched]``
        when this decision asked for it ahead of time."""
        return "[query, prefetched]" if key in self.prefetched else "[cache]"

    def render(self) -> str:
        return "\n".join(f"{stage:<10} {message}" for stage, message in self.lines)
