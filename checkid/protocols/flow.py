"""What every front-end connection needs besides its protocol: read back-pressure when the
peer does not read its answers, and closing connections that stay idle too long."""
from __future__ import annotations

import asyncio
from collections.abc import Callable


class FlowControl:
    """Pauses reading while too many requests are in flight or the write buffer is full
    (``pause_writing``), and closes the connection after ``idle`` seconds without data and
    with nothing in flight."""

    def __init__(self, transport: asyncio.Transport, idle: float, max_in_flight: int,
                 in_flight: Callable[[], int], on_idle: Callable[[], None]) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.idle = idle
        self.max_in_flight = max_in_flight
        self.in_flight = in_flight
        self.on_idle = on_idle
        self.writing_paused = False
        self.reading_paused = False
        self.last = self.loop.time()
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(idle, self._check_idle) if idle > 0 else None

    def activity(self) -> None:
        self.last = self.loop.time()

    def update(self) -> None:
        """Pause or resume reading to match the in-flight count and the write buffer."""
        busy = self.writing_paused or self.in_flight() >= self.max_in_flight
        if busy and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        elif not busy and self.reading_paused and not self.transport.is_closing():
            self.reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.update()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.update()

    def _check_idle(self) -> None:
        quiet = self.loop.time() - self.last
        if quiet >= self.idle and not self.in_flight():
            self.timer = None
            self.on_idle()
        else:
            self.timer = self.loop.call_later(max(0.05, self.idle - quiet), self._check_idle)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
