"""Parameterizations as data, and the solver that derives their learning-rate exponents.

Notation of Everett et al. 2024 ([E]): for a layer with raw weight w,
    effective weight  W = n^-a w,   init  w ~ N(0, n^-2b),   LR  eta = beta * gamma * m^-c,
with n the layer's growing dimension and m = n / n0 the width multiplier.

The (a, b) pairs are a table (`ABC`). The LR exponents c are NOT a table: `solve_c` derives
them from the stability constraints of [E] (parameterizations.md §4) for any alignment values,
so measured alignments give their own exponents. The gradient exponents g that set per-layer
epsilon (§5) are derived too (`grad_exponents`). What each optimizer contributes (its regime,
base epsilon and epsilon power) is read from its spec in `hptransfer.optim.registry`, which
imports the optimizer's module, and torch, on first use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from hptransfer.config import LR_EXPONENTS
from hptransfer.errors import ConfigError
from hptransfer.optim import registry
from hptransfer.optim.registry import Regime

Number = Fraction | float
ROLES3 = ("input", "hidden", "output")
HALF = Fraction(1, 2)

#: (a, b) per role: input, hidden, output. [E] Table 1 / parameterizations.md §2.
_ABC: dict[str, dict[str, tuple[Number, Number]]] = {
    "sp": {"input": (0, 0), "hidden": (0, HALF), "output": (0, HALF)},
    "ntk": {"input": (0, 0), "hidden": (HALF, 0), "output": (HALF, 0)},
    "mup": {"input": (-HALF, HALF), "hidden": (0, HALF), "output": (HALF, HALF)},
    "mfp": {"input": (0, 0), "hidden": (HALF, 0), "output": (1, 0)},
}
ABC: dict[str, dict[str, tuple[Fraction, Fraction]]] = {
    p: {r: (Fraction(a), Fraction(b)) for r, (a, b) in t.items()} for p, t in _ABC.items()
}

#: (a, b) of SP: the base model every parameterization equals at width_mult 1 (relative anchor).
SP_B = {role: ABC["sp"][role][1] for role in ROLES3}

#: Update families of [E]: how a layer's update scales with its gradient and its weights.
#: k is the symmetry constant of (a, b, c) -> (a + t, b - t, c - k t).
FAMILIES = {"adam": 1, "sgd": 2, "adam_ps": 0}


@dataclass(frozen=True)
class Alignment:
    """Alignment exponents of one layer (parameterizations.md §3): 1/2 = independent, 1 = full.

    alpha: dW x0 (update times the input at init); omega: W0 dx; u: dW dx.
    """

    alpha: Number
    omega: Number
    u: Number


ALIGNMENTS = {
    "full": Alignment(Fraction(1), HALF, Fraction(1)),
    "none": Alignment(HALF, HALF, HALF),
}

RoleAlignment = str | Alignment | dict[str, Alignment]


def measured_alignment(values: Mapping[str, Sequence[float]]) -> dict[str, Alignment]:
    """Per-role alignment from measured exponents: ``{role: (alpha, omega, u)}`` (the
    ``param.alignment_values`` of the "measured" preset, e.g. averaged probes of a run)."""
    out: dict[str, Alignment] = {}
    for role, triple in values.items():
        alpha, omega, u = (float(v) for v in triple)
        out[role] = Alignment(alpha, omega, u)
    return out


def _per_role(alignment: RoleAlignment) -> dict[str, Alignment]:
    if isinstance(alignment, str):
        if alignment not in ALIGNMENTS:
            raise ConfigError(
                f"unknown alignment {alignment!r}; choose one of {', '.join(ALIGNMENTS)}"
                " or give per-role values"
            )
        alignment = ALIGNMENTS[alignment]
    if isinstance(alignment, Alignment):
        return {"hidden": alignment, "output": alignment}
    missing = {"hidden", "output"} - set(alignment)
    if missing:
        raise ConfigError(f"alignment needs values for roles {sorted(missing)}")
    return dict(alignment)


def _exact(x: float, *inputs: Number) -> Number:
    """Snap an LP solution to a small fraction when every input was a fraction."""
    if all(isinstance(v, (int, Fraction)) for v in inputs):
        f = Fraction(x).limit_denominator(64)
        if abs(float(f) - x) < 1e-7:
            return f
    return float(x)


def solve_c(
    abc: Mapping[str, tuple[Number, Number]],
    family: str,
    alignment: RoleAlignment = "full",
    n_hidden: int = 2,
) -> dict[str, Number]:
    """Maximal-update LR exponents c per role (input, hidden, output, vector).

    Constraint system of [E] (parameterizations.md §4), r_l = exponent of the activation
    change of layer l, feature learning requires every r_l >= 0:

        input:   r_1   = U_1
        hidden:  r_l   = min(U_l - alpha_l,  U_l + r_{l-1} - u_l,  1/2 + r_{l-1} - omega_l)
        output:  r_out = min(a+b + r_L - omega,  U_out - alpha,  U_out + r_L - u)

    with the update exponent U_l = a_l + c_l for Adam; a_l + (c_l + b_l) with c_l >= 0 for Adam
    with parameter scaling; for SGD U_l = 2 a_l + c_l + min(a_out + b_out, 2 a_out + c_out) on
    input/hidden layers (the gradient carries the backward exponent) and 2 a_out + c_out on the
    output. Vectors are an input-like row with (a, b) = (0, 0). Among feasible c, the maximal
    learning rates minimize sum(c); this is a linear program (each min(...) >= 0 splits into
    one inequality per term, and r_l enters later rows only with a positive sign), solved here
    with HiGHS and snapped back to exact fractions when the inputs were fractions.

    ``n_hidden`` is the number of hidden layers in series that the chain models: the model's
    hidden matrices along its longest path (docs/alignment.md counts them per model: depth for
    the MLP, 4 per block for nanodo and llama). The presets do not depend on it (the default 2
    gives [E]'s tables). Per layer, r_l <= min(U - alpha, r_{l-1} + s) with
    s = min(U - u, 1/2 - omega): where s < 0 the chain loses |s| per layer, so c grows with
    n_hidden. omega > 1/2 makes s < 0 for every c, and the hidden c (mostly the input c too)
    then rises with depth; with omega <= 1/2 and u <= alpha, U >= alpha >= u gives s >= 0 and c
    does not depend on n_hidden; u > alpha can go either way (the LP may buy s < 0 cheaper at
    small depth)."""
    from scipy.optimize import linprog

    if family not in FAMILIES:
        raise ValueError(f"unknown optimizer family {family!r}; choose one of {list(FAMILIES)}")
    if isinstance(n_hidden, bool) or not isinstance(n_hidden, int) or n_hidden < 1:
        raise ValueError(f"n_hidden must be an integer >= 1, got {n_hidden!r}")
    al = _per_role(alignment)
    a = {r: float(abc[r][0]) for r in ROLES3}
    b = {r: float(abc[r][1]) for r in ROLES3}
    a["vector"], b["vector"] = 0.0, 0.0
    roles = ("input", "hidden", "output", "vector")
    # variable layout: c_input, c_hidden, c_output, c_vector, r_1 .. r_{n_hidden+1}, r_out, r_vec
    n_r = n_hidden + 3
    nv = 4 + n_r
    ci = {r: i for i, r in enumerate(roles)}
    r_in, r_out, r_vec = 4, 4 + n_hidden + 1, 4 + n_hidden + 2
    rows: list[np.ndarray] = []
    rhs: list[float] = []

    def add(coefs: dict[int, float], const: float) -> None:
        """Add the constraint  r_target <= sum(coefs * x) + const  written as A x <= b."""
        row = np.zeros(nv)
        for i, v in coefs.items():
            row[i] += v
        rows.append(row)
        rhs.append(const)

    def update_terms(role: str) -> list[tuple[dict[int, float], float]]:
        """U_role as a list of linear forms whose minimum it is: (coefficients, constant)."""
        if family == "adam":
            return [({ci[role]: 1.0}, a[role])]
        if family == "adam_ps":
            return [({ci[role]: 1.0}, a[role] + b[role])]
        # sgd
        if role == "output":
            return [({ci["output"]: 1.0}, 2 * a["output"])]
        base = 2 * a[role]
        return [
            ({ci[role]: 1.0}, base + a["output"] + b["output"]),
            ({ci[role]: 1.0, ci["output"]: 1.0}, base + 2 * a["output"]),
        ]

    def bound(
        target: int,
        terms: list[tuple[dict[int, float], float]],
        extra: dict[int, float],
        const: float,
    ) -> None:
        """r_target <= term + extra + const for each term of U (a min of linear forms)."""
        for coefs, c0 in terms:
            row = {target: 1.0}
            for i, v in {**coefs}.items():
                row[i] = row.get(i, 0.0) - v
            for i, v in extra.items():
                row[i] = row.get(i, 0.0) - v
            add(row, c0 + const)

    # input (and vectors): r = U
    bound(r_in, update_terms("input"), {}, 0.0)
    bound(r_vec, update_terms("vector"), {}, 0.0)
    h = al["hidden"]
    for layer in range(1, n_hidden + 1):
        r_l, r_prev = r_in + layer, r_in + layer - 1
        bound(r_l, update_terms("hidden"), {}, -float(h.alpha))
        bound(r_l, update_terms("hidden"), {r_prev: 1.0}, -float(h.u))
        add({r_l: 1.0, r_prev: -1.0}, 0.5 - float(h.omega))
    o = al["output"]
    r_last = r_in + n_hidden
    add({r_out: 1.0, r_last: -1.0}, a["output"] + b["output"] - float(o.omega))
    bound(r_out, update_terms("output"), {}, -float(o.alpha))
    bound(r_out, update_terms("output"), {r_last: 1.0}, -float(o.u))

    lower = -np.inf if family != "adam_ps" else 0.0
    bounds = [(lower, None)] * 4 + [(0.0, None)] * n_r
    # minimize sum(c); a tiny tie-break prefers the larger hidden LR, then output, then input
    cost = np.zeros(nv)
    cost[:4] = 1.0
    cost[ci["hidden"]] += 3e-6
    cost[ci["output"]] += 2e-6
    cost[ci["input"]] += 1e-6
    res = linprog(cost, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=bounds, method="highs")
    if res.status != 0:
        raise ConfigError(f"no learning-rate exponents keep every layer stable ({res.message})")
    inputs = [v for r in ROLES3 for v in abc[r]] + [
        x for al_ in al.values() for x in vars(al_).values()
    ]
    return {r: _exact(float(res.x[ci[r]]), *inputs) for r in roles}


def grad_exponents(abc: Mapping[str, tuple[Number, Number]]) -> dict[str, Number]:
    """Exponents g of the gradient's entry size at init, n^-g, per role (parameterizations.md §5).

    The backward signal reaching the last hidden layer has entries n^-(a_out + b_out) (readout
    weight size times its multiplier); hidden layers with a + b = 1/2 preserve it; a weight's
    gradient is its multiplier n^-a times that signal times an O(1) activation. The readout's
    gradient is its multiplier times O(1) activations and logit gradients. Vectors: a = 0.
    """
    a_out, b_out = abc["output"]
    back = Fraction(a_out) + Fraction(b_out) if _all_exact(abc) else float(a_out) + float(b_out)
    return {
        "input": abc["input"][0] + back,
        "hidden": abc["hidden"][0] + back,
        "output": abc["output"][0],
        "vector": back,
    }


def _all_exact(abc: Mapping[str, tuple[Number, Number]]) -> bool:
    return all(isinstance(v, (int, Fraction)) for pair in abc.values() for v in pair)


def fold(a: Number, b: Number, c: Number, family: str) -> tuple[Number, Number, Number]:
    """The folded form of (a, b, c): no multiplier, same training dynamics (§4 symmetry)."""
    k = FAMILIES[family]
    return (0 * a, b + a, c + k * a)


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
    elif any(a != ALIGNMENTS["full"] for a in _per_role(alignment).values()):
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


#: [K]'s four SP -> muP switches (parameterizations.md §7), in the order of the digits of a code.
K_SWITCHES = ("embd", "attn", "norm", "readout")


def _check_code(code: str) -> None:
    if len(code) != 4 or set(code) - {"0", "1"}:
        raise ConfigError(f"k_switches must be four 0/1 digits such as '1000', got {code!r}")


def switch_name(code: str) -> str:
    """Name of a switch combination: "sp", "sp+embd", ..., "sp+attn+norm+readout", "mup"."""
    _check_code(code)
    if code == "1111":
        return "mup"
    on = [name for name, digit in zip(K_SWITCHES, code) if digit == "1"]
    return "+".join(["sp", *on])


#: All 16 combinations: code -> name.
SWITCH_COMBINATIONS = {code: switch_name(code) for code in (format(i, "04b") for i in range(16))}


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
    _check_code(code)
    if lr_exponents not in LR_EXPONENTS:
        raise ConfigError(f"lr_exponents={lr_exponents!r}; choose one of {', '.join(LR_EXPONENTS)}")
    mu = make_rule("mup", optimizer, "full", options=options)
    k = mu.k
    # muP folded into the direct form: (a, b, c) -> (0, b + a, c + k a)
    direct: dict[str, tuple[Number, Number]] = {
        r: (mu.roles[r].b + mu.roles[r].a, mu.roles[r].c + k * mu.roles[r].a) for r in ROLES3
    }
    direct["vector"] = (Fraction(0), mu.roles["vector"].c)
    c_hid = direct["hidden"][1]
    c_h = c_hid if lr_exponents == "per_layer" else Fraction(0)
    embd, _, norm, readout = (digit == "1" for digit in code)
    b_out = direct["output"][0] if readout else SP_B["output"]
    abc = {
        "input": (Fraction(0), Fraction(0)),
        "hidden": (Fraction(0), HALF),
        "output": (Fraction(0), b_out),
    }
    cs = {
        "input": c_h + (direct["input"][1] - c_hid if embd else 0),
        "hidden": c_h,
        "output": c_h + (direct["output"][1] - c_hid if readout else 0),
        "vector": c_h + (direct["vector"][1] - c_hid if norm else 0),
    }
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


def depth_multiplier(depth: int, depth_base: int, exponent: float) -> float:
    """Residual-branch multiplier (depth_base / depth)^exponent ([S], parameterizations.md §6):
    exponent 1/2 is depth-muP, 1 CompleteP, 0 off. Equal to 1 at the base depth."""
    if depth < 1 or depth_base < 1:
        raise ConfigError(f"depth and depth_base must be >= 1, got {depth} and {depth_base}")
    multiplier: float = (depth_base / depth) ** exponent
    return multiplier


def depth_lr_factor(family: str, depth: int, depth_base: int, exponent: float) -> float:
    """Hidden-layer LR factor that goes with the branch multiplier L^-p (L = depth).

    Derived, not from parameterizations.md: a block's update moves the residual stream by
    (LR x update size) x L^-p, and the L blocks' updates add up coherently, so the total is
    depth-free when LR ~ L^(p (1 + d) - 1), with d the update's degree in the gradient: d = 0
    for scale-free steps (Adam family, Muon, LAMB, Shampoo, Adam + parameter scaling), d = 1
    for SGD (whose gradient already carries the multiplier). Hence (L0/L)^(1-p) (depth-muP with
    Adam: 1/sqrt; CompleteP: 1) and (L0/L)^(1-2p) for SGD (depth-muP: 1).
    """
    d = 1 if family == "sgd" else 0
    return depth_multiplier(depth, depth_base, 1 - exponent * (1 + d))
