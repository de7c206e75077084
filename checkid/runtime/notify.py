"""systemd's readiness protocol (``sd_notify``): one datagram to ``$NOTIFY_SOCKET`` per state
change, so that a ``Type=notify`` unit is started once the daemon serves, and
``systemctl reload`` / ``stop`` show what it is doing. No library: it is one ``sendto``.

The master says ``READY=1`` once every listener is bound and every worker serves,
``RELOADING=1`` then ``READY=1`` around a reload, and ``STOPPING=1`` when it drains.
Without ``$NOTIFY_SOCKET`` (not under systemd) nothing is sent.
"""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) to systemd; False when not under it
    or the socket cannot be reached (logged: readiness is a convenience, never fatal)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # the abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), e.strerror or e)
        return False
    return True


def reloading() -> bool:
    """``RELOADING=1`` with the monotonic time systemd's ``Type=notify-reload`` asks for."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
