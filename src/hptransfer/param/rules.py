"""Parameterizations as data: the Rule of a (parameterization, optimizer, alignment) cell.

`make_rule` takes the (a, b) table and the LR exponents from `hptransfer.param.solver` (the
[E] solver) for optimizers with an [E] update family, or the spectral muP rule for the others,
and adds what each optimizer contributes (its regime, base epsilon and epsilon power), read
from its spec in `hptransfer.optim.registry`, which imports the optimizer's module, and torch,
on first use. [K]'s switches and the depth rules are in `hptransfer.param.ablations`; the
names of both modules stay importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from hptransfer.config import LR_EXPONENTS
from hptransfer.errors import ConfigError
from hptransfer.optim import registry
from hptransfer.optim.registry import Regime
from hptransfer.param.ablations import (
    K_SWITCHES,
    SWITCH_COMBINATIONS,
    depth_lr_factor,
    depth_multiplier,
    switch_exponents,
    switch_name,
)
from hptransfer.param.solver import (
    ABC,
    ALIGNMENTS,
    FAMILIES,
    HALF,
    ROLES3,
    SP_B,
    Alignment,
    Number,
    RoleAlignment,
    fold,
    grad_exponents,
    measured_alignment,
    per_role,
    solve_c,
)

__all__ = [
    "ABC",
    "ALIGNMENTS",
    "FAMILIES",
    "HALF",
    "K_SWITCHES",
    "ROLES3",
    "SMALL_EPS",
    "SPECTRAL_DIRECT_C",
    "SP_B",
    "SWITCH_COMBINATIONS",
    "Alignment",
    "Number",
    "RoleAlignment",
    "RoleRule",
    "Rule",
    "base_eps",
    "default_eps",
    "depth_lr_factor",
    "depth_multiplier",
    "eps_factor",
    "eps_power",
    "fold",
    "grad_exponents",
    "make_rule",
    "measured_alignment",
    "n_blocks",
    "optimizer_regime",
    "solve_c",
    "spectral_c",
    "switch_exponents",
    "switch_name",
    "switch_rule",
]

#: The "small" epsilon mode ([E]'s second mitigation): this constant, or the optimizer's default
#: where that is smaller already (Adafactor, Sophia).
SMALL_EPS = 1e-15


def default_eps(optimizer: str) -> float | None:
    """The optimizer's base epsilon (its spec's; None: it has none)."""
    return registry.get(optimizer).eps


def eps_power(optimizer: str) -> int:
    """Power of the gradient scale that the optimizer's epsilon is compared with (its spec's
    ``eps_power``): 1 where it floors sqrt(v) (Adam family, ADOPT, LAMB, Adafactor's eps1,
    Muon's AdamW side); 2 for Sophia, whose max(rho h, eps) floors a curvature estimate
    quadratic in the gradient; 0 for Shampoo, whose epsilon is relative to each block's largest
    eigenvalue (its eps_relative option, on by default), hence scale free. Per-layer epsilon is
    eps * width_mult^(-power * g), and the folded form divides eps by multiplier^power.
    Shampoo's eigenvalues grow with the gradient squared and with the layer's dimensions, so no
    width power would follow an absolute epsilon: per-layer mode switches eps_relative on for it
    (`parameterize`)."""
    return registry.get(optimizer).eps_power


def eps_factor(optimizer: str, g: Number, width_mult: float, eps_mode: str) -> float:
    """Per-layer epsilon factor width_mult^(-power * g) (1 in the constant modes)."""
    if eps_mode != "per_layer":
        return 1.0
    factor: float = width_mult ** -(eps_power(optimizer) * float(g))
    return factor


def base_eps(optimizer: str, eps: float | None, eps_mode: str) -> float | None:
    """The epsilon before per-layer scaling: ``eps``, else the optimizer's default; "small"
    mode replaces it by SMALL_EPS (or a smaller default). None: the optimizer has none."""
    default = default_eps(optimizer)
    if eps_mode == "small":
        if eps is not None:
            raise ConfigError("eps_mode small sets epsilon itself; pass eps=None")
        return None if default is None else min(default, SMALL_EPS)
    return eps if eps is not None else default


#: Spectral muP ([S], parameterizations.md §6): LR exponents c (input, hidden, output, vector)
#: in the DIRECT form, where the readout has no multiplier ((a, b) = input (0, 0), hidden
#: (0, 1/2), output (0, 1)), and the update's homogeneity k (1: the step's size does not depend
#: on the weights' scale, so folding a multiplier m^-a rescales the LR by m^-a; 0: steps
#: proportional to the weight norm). From ||dW||_* = Theta(sqrt(fan_out / fan_in)) for each
#: optimizer's rank-1 step:
#:
#: * Adam-type entries are O(lr), so a hidden step has spectral norm lr * fan_in (c = 1).
#: * Muon's steps are width-free in spectral norm once its own sqrt(fan_out / fan_in) factor is
#:   in the LR (`compute_specs` puts it there), so hidden c = 0; its other layers run AdamW.
#: * Shampoo with -1/4 roots on both sides scales like sqrt(fan_out/fan_in) itself, so c = 0 at
#:   a fixed aspect ratio, -1/2 for the input (fan_in fixed) and +1/2 for the direct readout.
#: * LAMB with its clamp binding: each step has the fixed Frobenius norm lr * clamp (a rank-1
#:   step: also its spectral norm), whatever the weights' scale, so k = 1 and c follows from
#:   sqrt(fan_out / fan_in) alone: input -1/2 (fan_out = n), hidden 0, readout +1/2 (fan_in = n),
#:   the same as Shampoo. (In muP's multiplier form this gives c = 0 for every matrix, the rule
#:   LAMB always had; k = 0 made the folded form and [K]'s switches wrong.) Vectors: a vector
#:   with Theta(1) entries (norm gains, trained biases) has ||w|| = Theta(sqrt(n)), so for
#:   n > clamp^2 the clamp binds and the per-tensor trust ratio spreads the fixed norm lr * clamp
#:   over n entries: each moves by lr * clamp / sqrt(n) ~ m^-1/2. Entry updates of Theta(1),
#:   what every other optimizer's vector rule gives (c = 0 for Adam), need LR ~ m^1/2: c = -1/2.
SPECTRAL_DIRECT_C: dict[str, tuple[Fraction, Fraction, Fraction, Fraction, int]] = {
    "adam": (Fraction(0), Fraction(1), Fraction(1), Fraction(0), 1),
    "lamb_clamped": (-HALF, Fraction(0), HALF, -HALF, 1),
    "shampoo": (-HALF, Fraction(0), HALF, Fraction(0), 1),
    "muon": (Fraction(0), Fraction(0), Fraction(1), Fraction(0), 1),
    "muon_match_rms_adamw": (Fraction(0), HALF, Fraction(1), Fraction(0), 1),
}


def n_blocks(shape: tuple[int, ...], block: int) -> int:
    """How many preconditioner blocks a blocked optimizer cuts a parameter into: its
    ``(shape[0], prod(shape[1:]))`` matrix split into ``ceil(dim / block)`` parts per side."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    return -(-rows // block) * -(-cols // block)


def optimizer_regime(optimizer: str, options: dict[str, Any] | None = None) -> Regime:
    """The optimizer's width-rule regime for these knobs, from its spec in the registry
    (kind "family": key is an [E] family for the solver; "spectral": key indexes
    SPECTRAL_DIRECT_C). The caveats of parameterizations.md §6 live in the specs: LAMB is
    spectral only with its weight-norm clamp (unclamped it acts like Adam + parameter scaling);
    Shampoo with Adam grafting takes the AdamW rules; Muon's "match_rms_adamw" LR adjustment
    needs an extra 1/sqrt(m) on hidden layers (never stack it with another)."""
    spec = registry.get(optimizer)
    return spec.regime(spec.with_knobs(options))


def spectral_c(key: str, abc: Mapping[str, tuple[Number, Number]]) -> dict[str, Number]:
    """Spectral-muP exponents moved into the gauge ``abc`` (whose init must be muP's up to the
    symmetry): c = c_direct - k * (a - a_direct) per role (a_direct = 0); vectors as given."""
    ci, ch, co, cv, k = SPECTRAL_DIRECT_C[key]
    c = {"input": ci, "hidden": ch, "output": co}
    out: dict[str, Number] = {r: c[r] - k * abc[r][0] for r in ROLES3}
    out["vector"] = cv
    return out


@dataclass(frozen=True)
class RoleRule:
    """Exponents and constant of one role: W = n^-a w, std n^-b, LR gamma m^-c, eps m^-g."""

    a: Number
    b: Number
    c: Number
    g: Number
    gamma: float = 1.0


@dataclass(frozen=True)
class Rule:
    parameterization: str
    optimizer: str
    family: str
    alignment: str
    roles: dict[str, RoleRule]
    block_size: int | None = None
    """Blocked preconditioner (Shampoo's max_preconditioner_dim) under its spectral rule: each
    block's step has a width-free spectral norm, and b_out x b_in blocks of a rank-1 gradient
    add up to a step sqrt(b_out * b_in) times larger, so a matrix's LR also gets the factor
    sqrt(blocks at base width / blocks) (`block_lr_factor`). None: no such factor."""
    knobs: dict[str, Any] = field(default_factory=dict)
    """The optimizer's knobs the rule was made for (defaults filled in): `compute_specs` reads
    the optimizer's own per-parameter factor with them (Muon's adjust_lr_fn)."""

    def block_lr_factor(self, shape: tuple[int, ...], base_shape: tuple[int, ...]) -> float:
        """The blocking factor of one matrix parameter (1.0 without blocking)."""
        if self.block_size is None or len(shape) < 2:
            return 1.0
        ratio = n_blocks(base_shape, self.block_size) / n_blocks(shape, self.block_size)
        factor: float = ratio**0.5  # float ** float is typed Any (a negative base gives complex)
        return factor

    @property
    def k(self) -> int:
        """Symmetry constant: folding a multiplier m^-a rescales the LR by m^-ka."""
        if self.family in FAMILIES:
            return FAMILIES[self.family]
        return SPECTRAL_DIRECT_C[self.family.removeprefix("spectral:")][4]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready exponents (as numbers) per role, and the blocking of `block_lr_factor`."""
        return {
            "parameterization": self.parameterization,
            "optimizer": self.optimizer,
            "alignment": self.alignment,
            "roles": {
                role: {
                    "a": float(r.a),
                    "b": float(r.b),
                    "c": float(r.c),
                    "g": float(r.g),
                    "gamma": r.gamma,
                }
                for role, r in self.roles.items()
            },
            "block_size": self.block_size,
        }


def make_rule(
    parameterization: str,
    optimizer: str,
    alignment: RoleAlignment = "full",
    *,
    lr_exponents: str = "per_layer",
    gammas: dict[str, float] | None = None,
    options: dict[str, Any] | None = None,
    k_switches: str = "",
    n_hidden: int = 2,
) -> Rule:
    """The full rule for a (parameterization, optimizer, alignment) cell.

    ``n_hidden`` is the number of hidden layers in series the solver models (`solve_c`): the
    model's own (`hptransfer.models.hidden_depth`) where it is known. The presets give the
    same exponents for any depth; measured alignments with omega > 1/2 do not.

    Optimizers with an [E] update family get c from the solver, for any parameterization and
    alignment. The others (Shampoo, Muon, clamped LAMB) have only a spectral muP rule, so they
    accept ``parameterization="mup"`` with full alignment, or ``lr_exponents="global"``. Other
    alignments raise ConfigError: the spectral condition sizes each step by its spectral norm,
    which is the size of the layer's output change only for a step aligned with its input
    (alpha = u = 1); with less alignment the output change depends on how the step's singular
    directions meet the input, which the spectral norm does not fix, and no rule is derived for
    that here. ``options`` are the optimizer's knobs (see `optimizer_regime`).
    ``lr_exponents="global"`` is [E]'s global-LR baseline: c = 0 for every role.
    ``k_switches`` (four 0/1 digits) gives [K]'s SP -> muP ablation instead (see
    `switch_rule`); it needs ``parameterization="sp"``.
    """
    if k_switches:
        if parameterization != "sp":
            raise ConfigError(f"k_switches apply on top of sp, not {parameterization}")
        return switch_rule(
            k_switches, optimizer, lr_exponents=lr_exponents, gammas=gammas, options=options
        )
    if parameterization not in ABC:
        raise ConfigError(
            f"unknown parameterization {parameterization!r}; choose one of {', '.join(ABC)}"
        )
    spec = registry.get(optimizer)
    knobs = spec.with_knobs(options)
    kind, key, block = spec.regime(knobs)
    if lr_exponents not in LR_EXPONENTS:
        raise ConfigError(f"lr_exponents={lr_exponents!r}; choose one of {', '.join(LR_EXPONENTS)}")
    abc = ABC[parameterization]
    family = key if kind == "family" else f"spectral:{key}"
    cs: dict[str, Number]
    if lr_exponents == "global":
        cs = {r: Fraction(0) for r in (*ROLES3, "vector")}
    elif kind == "family":
        cs = solve_c(abc, key, alignment, n_hidden=n_hidden)
    elif parameterization != "mup":
        raise ConfigError(
            f"{optimizer} has no [E] update family in this configuration, only a spectral muP"
            f" rule: use param.name = mup, or param.lr_exponents = global (got {parameterization})"
        )
    elif any(a != ALIGNMENTS["full"] for a in per_role(alignment).values()):
        raise ConfigError(
            f"{optimizer} has only a spectral muP rule, derived for full alignment (a step's"
            " spectral norm sets the output change only when the step is aligned with its input):"
            " use param.alignment = full, or param.lr_exponents = global"
        )
    else:
        cs = spectral_c(key, abc)
    gs = grad_exponents(abc)
    gammas = gammas or {}
    roles = {
        r: RoleRule(
            *(abc[r] if r in abc else (Fraction(0), Fraction(0))),
            cs[r],
            gs[r],
            float(gammas.get(r, 1.0)),
        )
        for r in (*ROLES3, "vector")
    }
    label = alignment if isinstance(alignment, str) else "measured"
    if lr_exponents != "per_layer":
        block = None
    elif block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise ConfigError(
            f"optimizer option max_preconditioner_dim must be an integer >= 1, got {block!r}"
        )
    return Rule(parameterization, optimizer, family, label, roles, block, knobs)


def switch_rule(
    code: str,
    optimizer: str,
    *,
    lr_exponents: str = "per_layer",
    gammas: dict[str, float] | None = None,
    options: dict[str, Any] | None = None,
) -> Rule:
    """[K]'s SP -> muP ablation ``code`` (digits: embedding LR, attention scale, norm-gain LR,
    readout rule) for ``optimizer``, written in the direct form (no multipliers, a = 0).

    Every role's LR is set relative to the hidden layers' exponent c_h. A switch that is off
    keeps SP's ratio (the same LR as the hidden layers; readout init std n^-1/2); a switch that
    is on takes muP's ratio for this optimizer, read from the muP rule folded into the direct
    form: embedding c = c_h + (c_in - c_hid) (Adam: LR x width_mult, [K]'s "SP+Embd"), vectors
    (norm gains) c = c_h + (c_vec - c_hid), readout b and c = c_h + (c_out - c_hid) (Adam: init
    std n^-1 at the hidden LR). ``lr_exponents`` picks c_h: "global" gives c_h = 0, so "0000" is
    SP with one global LR; "per_layer" gives muP's hidden exponent, so "1111" is muP (folded
    form; with eps rescaled as `fold` does, the same training). Per width the two choices run
    the same models at LRs relabelled by width_mult^c_h. The attention-scale digit is not an
    exponent: the model takes it (``model.attn_scale`` = linear, 1/head_dim, when it is 1).
    """
    switch_name(code)  # checks the code before the muP rule is built
    mu = make_rule("mup", optimizer, "full", options=options)
    k = mu.k
    # muP folded into the direct form: (a, b, c) -> (0, b + a, c + k a)
    direct: dict[str, tuple[Number, Number]] = {
        r: (mu.roles[r].b + mu.roles[r].a, mu.roles[r].c + k * mu.roles[r].a) for r in ROLES3
    }
    direct["vector"] = (Fraction(0), mu.roles["vector"].c)
    abc, cs = switch_exponents(code, direct, lr_exponents)
    gs = grad_exponents(abc)
    gammas = gammas or {}
    roles = {
        r: RoleRule(
            *(abc.get(r, (Fraction(0), Fraction(0)))), cs[r], gs[r], float(gammas.get(r, 1.0))
        )
        for r in (*ROLES3, "vector")
    }
    # a blocked preconditioner's factor is per matrix, like the hidden exponent c_h
    block = mu.block_size if lr_exponents == "per_layer" else None
    return Rule(switch_name(code), optimizer, mu.family, "full", roles, block, mu.knobs)
