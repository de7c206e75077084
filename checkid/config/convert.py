"""TOML to :class:`~checkid.config.Config`: type conversion, then every section's checks.

``load(path)`` returns a frozen :class:`Config` or raises :class:`ConfigError` naming the key
at fault (``dns.timeout: expected a number, got 'soon'``).
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from checkid.config.schema import Config
from checkid.errors import ConfigError


def load(path: str | Path) -> Config:
    """Read and validate a TOML configuration file.

    :raises ConfigError: unreadable file, TOML syntax, unknown key, wrong type or value
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    return from_dict(data, source=str(path))


def from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    """Build a :class:`Config` from parsed TOML. :raises ConfigError: naming the key."""
    try:
        config: Config = _build(Config, data, "")
        _check_sections(config, "")
        config.check_across()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return config


def _check_sections(section: object, path: str) -> None:
    """Run ``check(path)`` of ``section`` and of every section below it, defaults included."""
    check = getattr(section, "check", None)
    if check is not None:
        check(path)
    for f in dataclasses.fields(typing.cast(Any, section)):
        value = getattr(section, f.name)
        if _is_section(value):
            _check_sections(value, _join(path, f.name))
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if _is_section(item):
                    _check_sections(item, f"{_join(path, f.name)}[{i}]")


def _is_section(value: object) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'top level'}: expected a table, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{_join(path, key)}: unknown key")
    kwargs = {key: _convert(value, hints[key], _join(path, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise ConfigError(f"{_join(path, missing[0]) if missing else path}: required key missing") from e


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, allowed))}, got {_show(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected an array, got {_show(value)}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {_show(value)}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, _join(path, str(k))) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{path}: unsupported type")  # not used by the schema
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_show(value)}")
        return value
    raise ConfigError(f"{path}: unsupported type {tp!r}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
