"""A per-decision record of what each stage did, for ``checkid query --trace``."""
from __future__ import annotations


class Trace:
    """Collects ``(stage, message)`` lines in order. Pass None instead to trace nothing."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def add(self, stage: str, message: str) -> None:
        self.lines.append((stage, message))

    def render(self) -> str:
        return "\n".join(f"{stage:<10} {message}" for stage, message in self.lines)
