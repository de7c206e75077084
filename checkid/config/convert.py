"""TOML to :class:`~checkid.config.Config`: type conversion, then every section's checks;
and back (:func:`to_toml`, for ``checkid config``).

``load(path)`` returns a frozen :class:`Config` or raises :class:`ConfigError` naming the key
at fault (``dns.timeout: expected a number, got 'soon'``). Given an ``errors`` list,
``load``/``from_dict`` instead collect every fault (one per key, and at most one per
section's own check) and build the rest, a faulty key keeping its default: what
``checkid check-config`` reports in one run.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from checkid.config.schema import Config
from checkid.errors import ConfigError


def load(path: str | Path, errors: list[str] | None = None) -> Config:
    """Read and validate a TOML configuration file.

    :param errors: collect every fault here instead of raising at the first; a file that
        cannot be read or parsed is one fault, and the defaults come back
    :raises ConfigError: unreadable file, TOML syntax, unknown key, wrong type or value
    """
    try:
        data = read(path)
    except ConfigError as e:
        if errors is None:
            raise
        errors.append(str(e))
        return Config()
    return from_dict(data, source=str(path), errors=errors)


def read(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of ``path``, not yet converted (what the file states, key by key).

    :raises ConfigError: unreadable file or TOML syntax, naming the path
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e.strerror if isinstance(e, OSError) else e}") from None


def from_dict(data: dict[str, Any], source: str = "<config>", errors: list[str] | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML.

    :param errors: collect every fault (prefixed with ``source``) instead of raising
    :raises ConfigError: naming the key
    """
    faults: list[str] | None = None if errors is None else []
    try:
        config: Config = _build(Config, data, "", faults)
        _check_sections(config, "", faults)
        _collect(faults, config.check_across)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    if errors is not None and faults:
        errors.extend(f"{source}: {fault}" for fault in faults)
    return config


def _collect(errors: list[str] | None, check: Any, *args: Any) -> None:
    """Run ``check(*args)``; its ConfigError goes to ``errors`` when collecting."""
    try:
        check(*args)
    except ConfigError as e:
        if errors is None:
            raise
        errors.append(str(e))


def _check_sections(section: object, path: str, errors: list[str] | None = None) -> None:
    """Run ``check(path)`` of ``section`` and of every section below it, defaults included."""
    check = getattr(section, "check", None)
    if check is not None:
        _collect(errors, check, path)
    for f in dataclasses.fields(typing.cast(Any, section)):
        value = getattr(section, f.name)
        if _is_section(value):
            _check_sections(value, _join(path, f.name), errors)
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if _is_section(item):
                    _check_sections(item, f"{_join(path, f.name)}[{i}]", errors)


def _is_section(value: object) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _build(cls: type, data: Any, path: str, errors: list[str] | None = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'top level'}: expected a table, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    failed = set()
    for key, value in data.items():
        if key not in names:
            _collect(errors, _unknown, _join(path, key))
            continue
        try:
            kwargs[key] = _convert(value, hints[key], _join(path, key), errors)
        except ConfigError as e:
            if errors is None:
                raise
            if not isinstance(e, _Reported):
                errors.append(str(e))  # the key keeps its default
            failed.add(key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if errors is not None and set(missing) <= failed:
            raise _Reported() from e  # its fault is on the list already
        raise ConfigError(f"{_join(path, missing[0]) if missing else path}: required key missing") from e


class _Reported(ConfigError):
    """A table that could not be built for faults already collected."""


def _unknown(path: str) -> None:
    raise ConfigError(f"{path}: unknown key")


def _convert(value: Any, tp: Any, path: str, errors: list[str] | None = None) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, path, errors)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, allowed))}, got {_show(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected an array, got {_show(value)}")
        (item,) = typing.get_args(tp)[:1]
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_convert(v, item, f"{path}[{i}]", errors))
            except ConfigError as e:
                if errors is None:
                    raise
                if not isinstance(e, _Reported):
                    errors.append(str(e))  # the item is left out
        return tuple(items)
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


# -- back to TOML --------------------------------------------------------------------------

def to_toml(config: Config, changed_only: bool = False) -> str:
    """``config`` as TOML that :func:`from_dict` reads back to an equal :class:`Config`.

    :param changed_only: only the keys whose value differs from the embedded default
        (``postconf -n``); a changed array of tables is written whole
    """
    lines: list[str] = []
    _emit(config, Config() if changed_only else None, "", lines)
    return "\n".join(lines).strip() + "\n"


def _emit(section: Any, default: Any | None, path: str, lines: list[str], array: bool = False) -> None:
    plain, tables, arrays = [], [], []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if default is not None and value == getattr(default, f.name):
            continue
        if _is_section(value):
            tables.append((f.name, value))
        elif isinstance(value, tuple) and value and all(_is_section(v) for v in value):
            arrays.append((f.name, value))
        else:
            plain.append(f"{_key(f.name)} = {_value(value)}")
    if path and (plain or array):  # an item of an array of tables is there even when empty
        lines.extend(["", f"[[{path}]]" if array else f"[{path}]"])
    lines.extend(plain)
    for name, value in tables:
        _emit(value, getattr(default, name) if default is not None else None, _join(path, name), lines)
    for name, items in arrays:
        for item in items:
            _emit(item, None, _join(path, name), lines, array=True)


def _key(name: str) -> str:
    bare = name and all(c.isalnum() and c.isascii() or c in "-_" for c in name)
    return name if bare else json.dumps(name, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items()) + "}"
    if _is_section(value):
        return "{" + ", ".join(f"{_key(f.name)} = {_value(getattr(value, f.name))}"
                               for f in dataclasses.fields(value)) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")
