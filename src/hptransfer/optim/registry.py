"""The optimizer registry: one :class:`OptimizerSpec` per optimizer, and every table derived.

Each optimizer's module ends with its spec (the torch-provided ones share
:mod:`hptransfer.optim.torch_optimizers`); this module lists them, one line each, as lazy
references, so :func:`names` (config validation, the CLI's choices, ``hptransfer --help``)
imports neither torch nor the optimizers. :func:`get` imports the optimizer's module.

What the rest of the package reads from a spec: the knobs and their defaults
(``build_optimizer``, ``hptransfer rules --option``), the width-rule regime
(``param.rules.optimizer_regime``), the base epsilon and its power of the gradient scale
(per-layer epsilon), the per-parameter LR factor and epsilon the optimizer applies itself
(folded into the rule's LR by ``param.apply.compute_specs``, so ``hptransfer rules --model``
prints what runs), the per-layer diagnostics (``optim.diagnostics``) and the distributed
support (``distributed``). :func:`registered` adds a spec for the duration of a ``with``
block (tests of a toy optimizer).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, overload

from hptransfer.errors import ConfigError


class Regime(NamedTuple):
    """Which width rule an optimizer follows: ``kind`` "family" -> ``key`` is an update family
    of [E] for the exponent solver (``param.rules.FAMILIES``); "spectral" -> ``key`` indexes
    ``param.rules.SPECTRAL_DIRECT_C``. ``block``: a blocked preconditioner's block size (the
    rule then adds a per-matrix block factor, ``param.rules.Rule.block_size``)."""

    kind: Literal["family", "spectral"]
    key: str
    block: int | None = None


class OwnFactor(NamedTuple):
    """What an optimizer does to one parameter's step beyond the group's LR and epsilon: its
    step is ``lr`` times this factor, with ``eps`` in place of the group's (None: the group's).
    The rule puts the factor into the LR (``compute_specs``); the param group then carries
    ``OWN_FACTOR_KEY`` so that the optimizer does not apply it a second time."""

    lr: float
    eps: float | None = None


#: Param-group key that says: this group's LR already contains the optimizer's own factor.
OWN_FACTOR_KEY = "lr_has_own_factor"

#: A per-layer diagnostic: (group, state of one parameter) -> (key prefix, 0-d tensor) or None.
Probe = Callable[[Mapping[str, Any], Mapping[str, Any]], "tuple[str, Any] | None"]


def _no_own_factor(role: str, shape: tuple[int, ...], knobs: Mapping[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything the package knows about one optimizer."""

    name: str
    factory: Callable[[list[dict[str, Any]], dict[str, Any]], Any]
    """(param groups, knobs without weight_decay / wd_mode) -> the torch optimizer."""
    knobs: Mapping[str, Any]
    """Knobs and their defaults (the one place they live; ``weight_decay``, ``wd_mode`` are
    common to all and added by ``optimizer_knobs``)."""
    regime: Callable[[Mapping[str, Any]], Regime]
    """The width-rule regime as a function of the knobs (defaults filled in)."""
    eps: float | None = None
    """The base epsilon the rule gives every param group (per-layer mode rescales it);
    None: the optimizer has no epsilon."""
    eps_power: int = 1
    """Power of the gradient scale the epsilon is compared with (``param.rules.EPS_POWER``)."""
    own_factor: Callable[[str, tuple[int, ...], Mapping[str, Any]], OwnFactor | None] = field(
        default=_no_own_factor
    )
    """(role, shape, knobs) -> the factor the optimizer applies to that parameter, or None."""
    diagnostics: tuple[Probe, ...] = ()
    """Per-layer diagnostics read from the optimizer's state (``optim.diagnostics``)."""
    fsdp: bool = True
    """Runs on FSDP2's sharded parameters."""
    not_data_parallel: str | None = None
    """Why it cannot train data parallel at all (None: it can)."""

    def with_knobs(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """The knobs with ``options`` over the defaults."""
        return {**self.knobs, **(options or {})}


def signature_knobs(cls: type, skip: Sequence[str] = ()) -> dict[str, Any]:
    """Knobs of an in-house optimizer: its constructor's keyword defaults (the one place they
    are written), less the params, lr and the common decay knobs."""
    out = {}
    for name, p in inspect.signature(cls).parameters.items():
        if name in ("params", "lr", "weight_decay", "wd_mode", *skip):
            continue
        out[name] = p.default
    return out


def family(key: str) -> Callable[[Mapping[str, Any]], Regime]:
    """The regime of an optimizer that is always in [E]'s update family ``key``."""
    regime = Regime("family", key)
    return lambda knobs: regime


# One line per optimizer: name -> "module:attribute" of its spec (imported on first use).
_ENTRIES: dict[str, str | OptimizerSpec] = {
    "sgd": "hptransfer.optim.torch_optimizers:SGD_SPEC",
    "adam": "hptransfer.optim.torch_optimizers:ADAM_SPEC",
    "adamw": "hptransfer.optim.torch_optimizers:ADAMW_SPEC",
    "adam_ps": "hptransfer.optim.adam_ps:SPEC",
    "adafactor": "hptransfer.optim.torch_optimizers:ADAFACTOR_SPEC",
    "adam_atan2": "hptransfer.optim.adam_atan2:SPEC",
    "adopt": "hptransfer.optim.adopt:SPEC",
    "lamb": "hptransfer.optim.lamb:SPEC",
    "sophia": "hptransfer.optim.sophia:SPEC",
    "shampoo": "hptransfer.optim.shampoo:SPEC",
    "muon": "hptransfer.optim.muon:SPEC",
}


def names() -> tuple[str, ...]:
    """The registered optimizer names, in registration order (imports no optimizer)."""
    return tuple(_ENTRIES)


class _Names(Sequence[str]):
    """A live, read-only view of :func:`names` (a command-line ``choices`` or a config check that
    sees temporary registrations)."""

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[str, ...]: ...
    def __getitem__(self, i: int | slice) -> str | tuple[str, ...]:
        return names()[i]

    def __len__(self) -> int:
        return len(_ENTRIES)

    def __contains__(self, name: object) -> bool:
        return name in _ENTRIES

    def __repr__(self) -> str:
        return repr(names())


#: The optimizer names as a live sequence (``config.OPTIMIZERS`` and ``optim.OPTIMIZERS``).
NAMES: Sequence[str] = _Names()


def check_name(name: str, key: str = "optimizer") -> None:
    """Raise ConfigError naming the valid optimizers when ``name`` is not registered."""
    if name not in _ENTRIES:
        raise ConfigError(f"{key}: unknown optimizer {name!r}; valid: {', '.join(_ENTRIES)}")


def get(name: str) -> OptimizerSpec:
    """The spec of optimizer ``name`` (ConfigError if unknown)."""
    check_name(name)
    entry = _ENTRIES[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        if not isinstance(entry, OptimizerSpec) or entry.name != name:
            raise TypeError(f"registry entry {name!r} does not point to its OptimizerSpec")
    return entry


@contextmanager
def registered(spec: OptimizerSpec) -> Iterator[OptimizerSpec]:
    """Register ``spec`` for the duration of the ``with`` block (it must be a new name)."""
    if spec.name in _ENTRIES:
        raise ValueError(f"optimizer {spec.name!r} is registered already")
    _ENTRIES[spec.name] = spec
    try:
        yield spec
    finally:
        del _ENTRIES[spec.name]
