"""The solver must DERIVE [E]'s exponent tables (parameterizations.md §4-5), not look them up."""

import itertools
from fractions import Fraction

import pytest

from hptransfer.param.rules import (
    ABC,
    ALIGNMENTS,
    Alignment,
    fold,
    grad_exponents,
    make_rule,
    measured_alignment,
    solve_c,
)

H = Fraction(1, 2)
# (input, hidden, output) c exponents, typed in from parameterizations.md §4
ADAM = {
    ("sp", "full"): (0, 1, 1),
    ("sp", "none"): (0, H, H),
    ("ntk", "full"): (0, H, H),
    ("ntk", "none"): (0, 0, 0),
    ("mup", "full"): (H, 1, H),
    ("mup", "none"): (H, H, 0),
    ("mfp", "full"): (0, H, 0),
    ("mfp", "none"): (0, 0, -H),
}
SGD = {
    ("sp", "full"): (-H, H, 1),
    ("sp", "none"): (-H, 0, H),
    ("ntk", "full"): (-H, -H, 0),
    ("ntk", "none"): (-H, -1, -H),
    ("mup", "full"): (0, 0, 0),
    ("mup", "none"): (0, -H, 0),
    ("mfp", "full"): (-1, -1, -1),
    ("mfp", "none"): (-1, -3 * H, -1),
}
ADAM_PS = {
    ("sp", "full"): (0, H, H),
    ("sp", "none"): (0, 0, 0),
    ("ntk", "full"): (0, H, H),
    ("ntk", "none"): (0, 0, 0),
    ("mup", "full"): (0, H, 0),
    ("mup", "none"): (0, 0, 0),
    ("mfp", "full"): (0, H, 0),
    ("mfp", "none"): (0, 0, 0),
}
TABLES = {"adam": ADAM, "sgd": SGD, "adam_ps": ADAM_PS}


@pytest.mark.parametrize("family", TABLES)
@pytest.mark.parametrize("param", ["sp", "ntk", "mup", "mfp"])
@pytest.mark.parametrize("alignment", ["full", "none"])
def test_solver_reproduces_tables_exactly(family, param, alignment):
    c = solve_c(ABC[param], family, alignment)
    got = (c["input"], c["hidden"], c["output"])
    assert got == tuple(Fraction(v) for v in TABLES[family][(param, alignment)])
    assert all(isinstance(v, Fraction) for v in got)


def _r_exponents(abc, family, al, c, n_hidden=2):
    """Forward pass of the constraint system with exact fractions (independent of the LP)."""
    a = {r: abc[r][0] for r in abc}
    b = {r: abc[r][1] for r in abc}
    ao, bo = a["output"], b["output"]

    def upd(role):
        if family == "adam":
            return a[role] + c[role]
        if family == "adam_ps":
            return a[role] + c[role] + b[role]
        if role == "output":
            return 2 * ao + c["output"]
        return 2 * a[role] + c[role] + min(ao + bo, 2 * ao + c["output"])

    r = [upd("input")]
    for _ in range(n_hidden):
        u = upd("hidden")
        r.append(min(u - al.alpha, u + r[-1] - al.u, H + r[-1] - al.omega))
    u = upd("output")
    r.append(min(ao + bo + r[-1] - al.omega, u - al.alpha, u + r[-1] - al.u))
    return r


# beyond the presets: alignments where the alpha and omega rows bind
ODD = {"alpha_binds": Alignment(Fraction(1), H, H), "omega_binds": Alignment(H, Fraction(1), H)}


@pytest.mark.parametrize("family", TABLES)
@pytest.mark.parametrize("param", ["sp", "mup", "mfp"])
@pytest.mark.parametrize("alignment", ["full", "none", *ODD])
def test_solver_is_the_unique_min_sum_on_a_grid(family, param, alignment):
    """Brute force over a half-integer grid: the LP's answer is feasible and the unique
    feasible point with the smallest sum of c."""
    grid = [Fraction(k, 2) for k in range(-4, 7)]
    al = ALIGNMENTS.get(alignment) or ODD[alignment]
    best, argbest = None, []
    for ci, ch, co in itertools.product(grid, repeat=3):
        c = {"input": ci, "hidden": ch, "output": co}
        if family == "adam_ps" and min(c.values()) < 0:
            continue
        if min(_r_exponents(ABC[param], family, al, c)) >= 0:
            s = ci + ch + co
            if best is None or s < best:
                best, argbest = s, [(ci, ch, co)]
            elif s == best:
                argbest.append((ci, ch, co))
    sol = solve_c(ABC[param], family, {"hidden": al, "output": al})
    assert argbest == [(sol["input"], sol["hidden"], sol["output"])]


def test_measured_alignment_gives_values_between_the_presets():
    mid = Alignment(0.75, 0.5, 0.75)
    c = solve_c(ABC["sp"], "adam", {"hidden": mid, "output": mid})
    full = solve_c(ABC["sp"], "adam", "full")
    none = solve_c(ABC["sp"], "adam", "none")
    assert isinstance(c["hidden"], float)
    assert float(none["hidden"]) < c["hidden"] < float(full["hidden"])
    assert c["hidden"] == pytest.approx(0.75)
    # per-role values: only the output is fully aligned
    mixed = solve_c(ABC["sp"], "adam", {"hidden": ALIGNMENTS["none"], "output": ALIGNMENTS["full"]})
    assert (mixed["hidden"], mixed["output"]) == (H, 1)


def test_global_lr_setting_is_c_zero():
    rule = make_rule("mup", "adam", lr_exponents="global")
    assert all(r.c == 0 for r in rule.roles.values())


# gradient exponents g of parameterizations.md §5 (input, hidden, output)
EPS_G = {"sp": (H, H, 0), "ntk": (H, 1, H), "mup": (H, 1, H), "mfp": (1, 3 * H, 1)}


@pytest.mark.parametrize("param", EPS_G)
def test_gradient_exponents_table(param):
    g = grad_exponents(ABC[param])
    assert (g["input"], g["hidden"], g["output"]) == EPS_G[param]


@pytest.mark.parametrize("family,k", [("adam", 1), ("sgd", 2), ("adam_ps", 0)])
def test_folding_keeps_the_solution_optimal(family, k):
    """The symmetry (a, b, c) -> (a + t, b - t, c - k t): folding mup's multipliers gives a table
    whose solved exponents equal the folded c (so mup input written as (0, 0) has Adam c = 0)."""
    folded = {}
    c = solve_c(ABC["mup"], family, "full")
    for role in ("input", "hidden", "output"):
        a, b = ABC["mup"][role]
        fa, fb, fc = fold(a, b, c[role], family)
        folded[role] = (fa, fb)
        assert fc == c[role] + k * a
    refolded = solve_c(folded, family, "full")
    for role in ("input", "hidden", "output"):
        assert refolded[role] == c[role] + k * ABC["mup"][role][0]


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown parameterization"):
        make_rule("xyz", "adam")
    with pytest.raises(ValueError, match="unknown alignment"):
        make_rule("mup", "adam", "partial")


def test_measured_alignment_rule_models_the_runs_own_depth() -> None:
    """With omega > 1/2 the hidden exponent depends on the chain length the solver models, so
    a run's rule is solved for its model's hidden layers in series (4 per nanodo block)."""
    from hptransfer.assemble import build
    from hptransfer.config import RunConfig
    from hptransfer.models import hidden_depth

    values = {"hidden": [0.8, 0.7, 0.8], "output": [0.9, 0.6, 0.9]}
    shallow = make_rule("mup", "adam", measured_alignment(values), n_hidden=2)
    deep = make_rule("mup", "adam", measured_alignment(values), n_hidden=8)
    assert shallow.roles["hidden"].c != deep.roles["hidden"].c
    cfg = RunConfig().replace(
        **{"param.alignment": "measured", "param.alignment_values": values, "model.width": 64}
    )
    assert hidden_depth(cfg.model.name, cfg.model.depth) == 8
    assert build(cfg).parameterization.rule.roles["hidden"].c == deep.roles["hidden"].c
