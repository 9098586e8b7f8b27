"""Checking a config dataclass's fields against their types: choices by name, numbers as finite
numbers, strings as strings; the coercion of a TOML value to a field's type; ranges."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Literal

from hptransfer.errors import ConfigError

_Section = typing.TypeVar("_Section")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r}; choose one of {', '.join(choices)}")


def check_fields(section: Any, prefix: str) -> None:
    """Every field of a config dataclass (a RunConfig section, a sweep's settings; called from
    their ``__post_init__``) against its type: choices (Literal) by name, numbers
    as numbers and finite (no NaN or inf anywhere in a config), strings as strings."""
    for name, hint in section_types(type(section)).items():
        if not dataclasses.is_dataclass(hint):
            coerce(f"{prefix}{name}", getattr(section, name), hint)


def check_min(key: str, value: float, low: float, *, strict: bool = False) -> None:
    """``value >= low`` (``> low`` when strict), naming the key."""
    if value < low or (strict and value == low):
        raise ConfigError(f"{key} must be {'>' if strict else '>='} {low:g}, got {value}")


def section_types(cls: type) -> dict[str, Any]:
    """Field types of a config dataclass (cached: resolving hints costs ~40 ms per call)."""
    return _type_hints(cls)


# functools.cache types its argument as Hashable, which mypy refuses a type[X] for (it looks up
# X.__hash__, the instances' method); section_types above passes a plain `type`.
@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the dataclass field type ``hint``; return the stored value."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0])
    if origin is Literal:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        _check_choice(key, value, args)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(key, v, a) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        if args[1] is Any:
            return dict(value)
        return {k: coerce(f"{key}[{k!r}]", v, args[1]) for k, v in value.items()}
    raise TypeError(f"unsupported config field type {hint!r} for {key}")


def from_table(cls: type[_Section], table: dict[str, Any], prefix: str) -> _Section:
    """A config dataclass from a table of its own fields: values coerced to the field types (an
    integer where a float is due becomes a float); the class checks the rest when built."""
    hints = section_types(cls)
    return cls(**{k: coerce(f"{prefix}{k}", v, hints[k]) for k, v in table.items()})
