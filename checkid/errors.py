"""The one exception root of checkid and its branches."""
from __future__ import annotations


class CheckidError(Exception):
    """checkid error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(CheckidError):
    """Invalid configuration."""


class PolicyError(CheckidError):
    """The policy file cannot be used."""


class ProtocolError(CheckidError):
    """The peer broke the protocol."""

