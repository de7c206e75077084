"""checkid: a mail-authentication decision engine for border MTAs.

The public contract is :func:`checkID`; inside the engine the same decision is
``await Engine.decide(envelope)``.
"""
from __future__ import annotations

from checkid.engine.contract import checkID, configure

__all__ = ["checkID", "configure"]
__version__ = "0.1.0"
