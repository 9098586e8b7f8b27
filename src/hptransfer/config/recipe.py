"""TOML in: recipes and ``--set`` values, read into a validated RunConfig."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hptransfer.config.run import RunConfig, apply_overrides, flatten
from hptransfer.errors import ConfigError


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax where it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such recipe file: {p}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None


def from_dict(table: dict[str, Any]) -> RunConfig:
    """A config from nested tables (as in a recipe) or dotted keys; validated."""
    return apply_overrides(RunConfig(), flatten(table)).validate()


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a recipe, apply dotted overrides, validate."""
    dotted = flatten(read_toml(path))
    dotted.update(overrides or {})
    return apply_overrides(RunConfig(), dotted).validate()
