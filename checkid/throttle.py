"""Rate-limited logging: a flood of one event writes one line per interval, not one per event.

An attacker who makes the daemon refuse connections must not also fill its disk with the
refusals. The counter beside each log line counts every event; the line says how many it
stands for.

This module does no I/O.
"""
from __future__ import annotations

#: one line per kind of event this often at most: a flood costs 6 lines a minute
INTERVAL_SECONDS = 10.0


class LogThrottle:
    """Decides when the next line about one kind of event may be written."""

    def __init__(self, interval: float = INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._next = float("-inf")
        self._suppressed = 0

    def ready(self, now: float) -> int | None:
        """Record one event at ``now`` (monotonic seconds).

        :returns: None when its line is to be left out; else how many events were left out
            since the last line written (0 for the first), for the line to say so
        """
        if now < self._next:
            self._suppressed += 1
            return None
        suppressed, self._suppressed = self._suppressed, 0
        self._next = now + self.interval
        return suppressed


def left_out(suppressed: int) -> str:
    """The end of a throttled line: how many like it were left out since the last one."""
    return f" ({suppressed} more since the last such line)" if suppressed else ""
