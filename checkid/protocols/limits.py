"""The error a codec or session raises when a peer passes a bound on what one connection may
hold. This module does no I/O (codecs and sessions import it).

The server closes that connection, as for any :class:`~checkid.errors.ProtocolError`, and
also counts it as ``("limits_exceeded", front, limit)``, so an operator sees which bound a
client hit.
"""
from __future__ import annotations

from checkid.errors import ProtocolError


class LimitExceeded(ProtocolError):
    """The peer sent more than a connection may hold.

    :param message: what was too much, for the log line
    :param limit: the bound's short name, the metric's ``limit`` label (``macros``, ``rcpts``, ...)
    """

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit
