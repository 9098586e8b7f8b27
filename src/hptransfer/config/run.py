"""RunConfig: one run's whole config (its sections and the seed), the checks across sections,
run_id, and dotted-key overrides (``model.width``; ``optimizer.options.a`` inside a table)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from hptransfer.config.fields import check_fields, check_min, coerce, section_types
from hptransfer.config.param import ParamConfig
from hptransfer.config.sections import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    TrackConfig,
    TrainConfig,
)
from hptransfer.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    param: ParamConfig = field(default_factory=ParamConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, hint in section_types(type(self)).items():
            if (
                isinstance(hint, type)
                and dataclasses.is_dataclass(hint)
                and not isinstance(getattr(self, name), hint)
            ):
                raise ConfigError(
                    f"{name}: expected a {hint.__name__}, got {getattr(self, name)!r}"
                )
        check_fields(self, "")
        check_min("seed", self.seed, 0)
        _check_across_sections(self)

    def validate(self) -> RunConfig:
        """Checks that touch the environment (the data files exist, model.factory and its
        hooks import); the values themselves were checked when the config was built. Returns
        the config."""
        self.model.validate()
        self.data.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return typing.cast(dict[str, Any], _plain(dataclasses.asdict(self)))

    def run_id(self) -> str:
        """Stable 12-hex-digit id: hash of the values that differ from the defaults, less [track].

        Leaving defaults out keeps ids, and so resumable results directories, valid when a new
        config field (with a default) is added; changing an existing default is therefore a
        breaking change for stored results.
        """
        cls: type = type(self)  # a subclass's own defaults (a field added with its default)
        defaults = _defaults(cls)
        changed = {
            k: v
            for k, v in flatten(self.to_dict()).items()
            if not k.startswith("track.") and (k not in defaults or defaults[k] != v)
        }
        canonical = json.dumps(changed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def replace(self, **dotted: Any) -> RunConfig:
        """A copy with dotted keys set, e.g. ``cfg.replace(**{"model.width": 256})``."""
        return apply_overrides(self, dotted)


def _check_across_sections(cfg: RunConfig) -> None:
    """Settings of one section that constrain another."""
    p = cfg.param
    if p.eps_mode == "small" and cfg.optimizer.eps is not None:
        raise ConfigError(
            "param.eps_mode = small sets epsilon itself: unset optimizer.eps or use constant"
        )
    if p.k_switches and p.k_switches[1] == "1" and cfg.model.factory:
        raise ConfigError(
            f"param.k_switches = {p.k_switches}: the attention switch (second digit) sets the "
            "built-in models' attention scale; model.factory's model has its own"
        )
    if p.k_switches and p.k_switches[1] == "0" and cfg.model.attn_scale != "sqrt":
        raise ConfigError(
            f"param.k_switches = {p.k_switches} keeps SP's 1/sqrt(head_dim) attention: set "
            "model.attn_scale = sqrt or the second switch to 1"
        )


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def check_keys(keys: typing.Iterable[str]) -> None:
    """Refuse, by name, a dotted key no recipe may set (without building a config)."""
    known = all_keys()
    for key in keys:
        parts = key.split(".")
        if key not in known and ".".join(parts[:2]) not in _DICT_FIELDS:
            raise _unknown_key(key, known)


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def all_keys() -> list[str]:
    """Every dotted key a recipe may set."""
    keys = ["seed"]
    for name, hint in section_types(RunConfig).items():
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            keys += [f"{name}.{k}" for k in section_types(hint)]
    return keys


def apply_overrides(cfg: RunConfig, dotted: dict[str, Any]) -> RunConfig:
    """Set dotted keys (``model.width``; ``optimizer.options.a`` inside a table field)."""
    sections = {
        name: dataclasses.asdict(getattr(cfg, name))
        for name, hint in section_types(RunConfig).items()
        if dataclasses.is_dataclass(hint)
    }
    top: dict[str, Any] = {"seed": cfg.seed}
    for key, value in dotted.items():
        parts = key.split(".")
        if parts == ["seed"]:
            top["seed"] = coerce("seed", value, int)
            continue
        if len(parts) < 2 or parts[0] not in sections:
            raise _unknown_key(key, all_keys())
        section_cls = section_types(RunConfig)[parts[0]]
        hints = section_types(section_cls)
        fname = parts[1]
        if fname not in hints:
            raise _unknown_key(key, all_keys())
        if len(parts) > 2:
            if typing.get_origin(hints[fname]) is not dict:
                raise _unknown_key(key, all_keys())
            table = dict(sections[parts[0]][fname])
            table[".".join(parts[2:])] = value
            sections[parts[0]][fname] = table
        else:
            sections[parts[0]][fname] = coerce(key, value, hints[fname])
    built = {name: section_types(RunConfig)[name](**values) for name, values in sections.items()}
    return RunConfig(**built, seed=top["seed"])


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables -> dotted keys; stops at dict-typed fields (overrides, options)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in _DICT_FIELDS:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


@functools.cache
def _defaults(cls: type) -> dict[str, Any]:
    """The dotted default values of a RunConfig class (cached per class)."""
    return flatten(cls().to_dict())


_DICT_FIELDS = {
    "param.overrides",
    "param.init_overrides",
    "param.alignment_values",
    "optimizer.options",
}
