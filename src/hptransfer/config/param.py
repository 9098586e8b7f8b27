"""The [param] section: the parameterization, its anchors, forms and constants, and the checks
of its tables (alignment values, init overrides)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hptransfer.config.choices import (
    AlignmentName,
    AnchorChoice,
    EpsMode,
    Form,
    LrExponents,
    ParameterizationName,
    Role,
    TieRule,
)
from hptransfer.config.fields import check_fields, check_min
from hptransfer.errors import ConfigError


@dataclass(frozen=True)
class ParamConfig:
    name: ParameterizationName = "mup"
    """Parameterization: sp, ntk, mup or mfp (the (a, b) table of [E])."""
    alignment: AlignmentName = "full"
    """Alignment the LR exponents c are derived for: full, none, or measured (from
    param.alignment_values; `hptransfer rules --alignment-from RUN_DIR` prints them)."""
    alignment_values: dict[str, Any] = field(default_factory=dict)
    """measured: per role (hidden, output) the exponents [alpha, omega, u], e.g.
    {hidden = [0.8, 0.5, 0.7], output = [0.9, 0.5, 0.8]}."""
    base_width: int = 64
    """Width n0 at which hyperparameters are tuned; width_mult = width / base_width."""
    lr_exponents: LrExponents = "per_layer"
    """per_layer: c from the solver; global: c = 0 for every role (one LR per width)."""
    anchor: AnchorChoice = "auto"
    """relative: a and b use width_mult (every parameterization equals SP at base_width);
    absolute: a and b use the layer's n itself, as [E] does; model: the model's own init at
    base_width, rescaled by width_mult^-b (microsoft/mup; see hptransfer.param.init); auto:
    model for model.factory's model (one the project did not write keeps its own init),
    relative for the built-in models."""
    form: Form = "multiplier"
    """multiplier: forward multipliers n^-a; folded: no multipliers, init/LR/eps absorb them."""
    gamma_input: float = 1.0
    """Per-role LR constant for input (embedding) parameters."""
    gamma_hidden: float = 1.0
    gamma_output: float = 1.0
    gamma_vector: float = 1.0
    init_input: float = 1.0
    """Multiplies the rule's init std for input parameters (0 gives a zero init)."""
    init_hidden: float = 1.0
    init_output: float = 1.0
    eps_mode: EpsMode = "constant"
    """constant: one epsilon; small: a tiny constant (1e-15, or the optimizer's default if
    smaller); per_layer: eps * width_mult^-g (g = the role's gradient exponent; see
    docs/alignment.md for Sophia and Shampoo). adam_atan2 and sgd have no epsilon."""
    k_switches: str = ""
    """[K]'s SP -> muP switches as four 0/1 digits: embedding LR, attention scale, norm-gain LR,
    readout rule (e.g. "1000" = SP+Embd, "1111" = muP); needs param.name = sp. "" = off."""
    depth_exponent: float = 0.0
    """p of the residual-branch multiplier (depth_base / depth)^p: 0.5 depth-muP, 1 CompleteP;
    0 = off."""
    depth_base: int = 0
    """L0, the depth at which hyperparameters are tuned (needed when depth_exponent > 0)."""
    depth_lr: bool = True
    """With depth_exponent > 0, also scale hidden-layer LRs by (L0/L)^(1-p) ((L0/L)^(1-2p) for
    SGD) so each block's update moves the residual stream by a depth-free amount (the
    depth-muP / CompleteP rule; derived in docs/alignment.md, not given by [S])."""
    depth_branches: str = (
        "*blocks.*.attn,*blocks.*.mlp,*layers.*.self_attn,*layers.*.mlp,*h.*.attn,*h.*.mlp"
    )
    """Comma-separated fnmatch patterns naming the residual-branch modules whose outputs get the
    depth multiplier (the defaults cover nanodo, llama-style and GPT-2-style names)."""
    tied: TieRule = "error"
    """What to do with tied input/output weights: error, input, output, untie."""
    overrides: dict[str, Role] = field(default_factory=dict)
    """Name pattern (fnmatch) -> role, applied before automatic role inference."""
    init_overrides: dict[str, Any] = field(default_factory=dict)
    """Name pattern (fnmatch) -> "keep" (values kept), "zero", or a number: the init constant
    of the matching parameters in place of their role's init_* (hptransfer.param.init)."""

    def __post_init__(self) -> None:
        check_fields(self, "param.")
        _check_alignment_values(self.alignment, self.alignment_values)
        check_init_overrides(self.init_overrides, "param.init_overrides")
        for role in ("input", "hidden", "output", "vector"):
            check_min(f"param.gamma_{role}", getattr(self, f"gamma_{role}"), 0, strict=True)
        for role in ("input", "hidden", "output"):
            check_min(f"param.init_{role}", getattr(self, f"init_{role}"), 0)
        if self.k_switches and (len(self.k_switches) != 4 or set(self.k_switches) - {"0", "1"}):
            raise ConfigError(
                f"param.k_switches must be four 0/1 digits such as '1000', got {self.k_switches!r}"
            )
        if self.k_switches and self.name != "sp":
            raise ConfigError("param.k_switches applies on top of sp: set param.name = sp")
        if self.k_switches and self.alignment != "full":
            raise ConfigError("param.k_switches uses muP's full-alignment ratios: unset alignment")
        check_min("param.depth_exponent", self.depth_exponent, 0)
        if self.depth_exponent > 0 and self.depth_base < 1:
            raise ConfigError("param.depth_exponent > 0 needs param.depth_base (L0) >= 1")
        check_min("param.base_width", self.base_width, 1)
        check_min("param.depth_base", self.depth_base, 0)


def check_init_overrides(
    overrides: Mapping[str, Any] | None, key: str = "init_overrides"
) -> dict[str, str | float]:
    """Init overrides (name pattern -> "keep", "zero" or a finite number >= 0) as a dict; a
    bad value is a ConfigError naming ``key`` and the pattern."""
    out = dict(overrides or {})
    for pattern, value in out.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (value in ("keep", "zero") or (number and math.isfinite(value) and value >= 0)):
            raise ConfigError(
                f'{key} {pattern!r} = {value!r}: use "keep", "zero" or a number >= 0 (the init '
                "constant of the matching parameters)"
            )
    return out


def _check_alignment_values(alignment: str, values: dict[str, Any]) -> None:
    """measured needs [alpha, omega, u] numbers for hidden and output; the presets need none."""
    if alignment != "measured":
        if values:
            raise ConfigError("param.alignment_values is used only with param.alignment = measured")
        return
    if set(values) != {"hidden", "output"}:
        raise ConfigError(
            "param.alignment = measured needs param.alignment_values for exactly hidden and "
            f"output, got {sorted(values) or 'none'}"
        )
    for role, triple in values.items():
        if (
            not isinstance(triple, (list, tuple))
            or len(triple) != 3
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in triple
            )
        ):
            raise ConfigError(
                f"param.alignment_values.{role} must be [alpha, omega, u] finite numbers, "
                f"got {triple!r}"
            )
