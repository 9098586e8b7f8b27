"""[E]'s (a, b) table, alignment exponents, and the solver that derives LR exponents from them.

Notation of Everett et al. 2024 ([E]): for a layer with raw weight w,
    effective weight  W = n^-a w,   init  w ~ N(0, n^-2b),   LR  eta = beta * gamma * m^-c,
with n the layer's growing dimension and m = n / n0 the width multiplier.

The (a, b) pairs are a table (`ABC`). The LR exponents c are NOT a table: `solve_c` derives
them from the stability constraints of [E] (parameterizations.md §4) for any alignment values,
so measured alignments give their own exponents. The gradient exponents g that set per-layer
epsilon (§5) are derived too (`grad_exponents`). Pure math: no optimizer, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from hptransfer.errors import ConfigError

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


def per_role(alignment: RoleAlignment) -> dict[str, Alignment]:
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
    al = per_role(alignment)
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
