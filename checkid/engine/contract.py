"""``checkID``: the synchronous public contract over ``await Engine.decide(envelope)``."""
from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path

from checkid import config as config_mod
from checkid.config import Config
from checkid.engine.decision import Envelope
from checkid.engine.engine import Engine
from checkid.errors import CheckidError

_engine: Engine | None = None
_loop: asyncio.AbstractEventLoop | None = None


def configure(config: Config | str | Path | None = None) -> Engine:
    """Build the engine ``checkID`` uses: from a Config, a TOML path, or
    ``$CHECKID_CONFIG`` / the embedded defaults when None."""
    global _engine, _loop
    if config is None:
        env = os.environ.get("CHECKID_CONFIG")
        config = config_mod.load(env) if env else Config()
    elif not isinstance(config, Config):
        config = config_mod.load(config)
    if _loop is None or _loop.is_closed():
        _loop = _new_loop()
    _engine = Engine(config)
    return _engine


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def envelope(IP: str | None = None, ID: str | None = None, H: str | None = None, S: str | None = None,
             R: Iterable[str] = (), Hdrs: Iterable[str | tuple[str, str]] = (),
             Body: str | bytes | None = None) -> Envelope:
    """The :class:`Envelope` for the contract's arguments. A header given as ``"Name: value"``
    keeps its value raw (leading space and folding; a final line break dropped): DKIM
    hashes it as sent."""
    headers = tuple(
        (h.partition(":")[0].strip(), h.partition(":")[2].removesuffix("\n").removesuffix("\r"))
        if isinstance(h, str) else (h[0], h[1])
        for h in Hdrs
    )
    body = Body.encode("utf-8", "surrogateescape") if isinstance(Body, str) else Body
    return Envelope(IP, ID, H, S, tuple(R), headers, body)


def checkID(IP: str | None = None, ID: str | None = None, H: str | None = None, S: str | None = None,
            R: Iterable[str] = [], Hdrs: Iterable[str | tuple[str, str]] = [],  # noqa: B006 - the contract
            Body: str | bytes | None = None) -> tuple[str, tuple[int, str, str], list[dict[str, str]]]:
    """Decide one SMTP transaction: ``(action, (code, enhanced code, text), headers)``.

    Synchronous; inside a running event loop use ``await engine.decide(envelope)``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise CheckidError("checkID() blocks; inside an event loop use await Engine.decide(envelope)")
    engine = _engine or configure()
    assert _loop is not None
    return _loop.run_until_complete(engine.decide(envelope(IP, ID, H, S, R, Hdrs, Body))).as_tuple()
