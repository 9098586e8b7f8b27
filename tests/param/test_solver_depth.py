"""How the solver's exponents depend on the number of hidden layers it models (issue 14, item 6).

Per hidden layer r_l <= min(U - alpha, r_{l-1} + s) with s = min(U - u, 1/2 - omega)
(`solve_c`'s docstring): omega > 1/2 makes s < 0 whatever c is, so every layer loses |s| and the
exponents grow with depth; omega <= 1/2 with u <= alpha gives s >= 0 at the optimum, and then
they do not depend on it. docs/alignment.md says which depth each model has.
"""

from __future__ import annotations

import itertools

import pytest

from hptransfer.param.rules import ABC, FAMILIES, Alignment, solve_c

DEPTHS = (1, 2, 4, 8)
VALUES = (0.5, 0.75, 1.0)


def _cs(param: str, family: str, al: Alignment) -> list[dict] | None:
    """c per role at each modelled depth, None where some depth is infeasible."""
    try:
        return [solve_c(ABC[param], family, {"hidden": al, "output": al}, n) for n in DEPTHS]
    except ValueError:
        return None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", ["full", "none"])
def test_presets_do_not_depend_on_depth(family: str, preset: str) -> None:
    for param in ABC:
        cs = [solve_c(ABC[param], family, preset, n) for n in DEPTHS]
        assert all(c == cs[0] for c in cs), (param, family, preset)


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_c_grows_with_depth_when_omega_exceeds_one_half(family: str) -> None:
    solved = 0
    for param, alpha, omega, u in itertools.product(ABC, VALUES, (0.6, 0.75), VALUES):
        cs = _cs(param, family, Alignment(alpha, omega, u))
        if cs is None:
            continue
        solved += 1
        hidden = [float(c["hidden"]) for c in cs]
        assert all(a <= b + 1e-9 for a, b in zip(hidden, hidden[1:])), (param, alpha, omega, u)
        assert hidden[-1] > hidden[0] + 0.1, (param, alpha, omega, u, hidden)
    assert solved >= 20


@pytest.mark.parametrize("family", FAMILIES)
def test_no_depth_dependence_when_omega_at_most_one_half_and_u_at_most_alpha(
    family: str,
) -> None:
    for param, alpha, omega, u in itertools.product(ABC, VALUES, (0.25, 0.5), VALUES):
        if u > alpha:
            continue
        cs = _cs(param, family, Alignment(alpha, omega, u))
        assert cs is not None and all(c == cs[0] for c in cs), (param, alpha, omega, u)


def test_measured_example_depth_dependence() -> None:
    """A measured-like hidden alignment (alpha 0.7, omega 0.6, u 0.8) for mup + Adam: each
    modelled layer adds omega - 1/2 = 0.1 to the hidden and input exponents."""
    al = Alignment(0.7, 0.6, 0.8)
    cs = [solve_c(ABC["mup"], "adam", {"hidden": al, "output": al}, n) for n in DEPTHS]
    assert [round(float(c["hidden"]), 9) for c in cs] == [0.7, 0.8, 1.0, 1.4]
    assert [round(float(c["input"]), 9) for c in cs] == [0.6, 0.7, 0.9, 1.3]
    assert {round(float(c["output"]), 9) for c in cs} == {0.3}


def test_u_above_alpha_can_depend_on_depth_even_at_omega_one_half() -> None:
    al = Alignment(0.5, 0.5, 0.6)
    one, two = (solve_c(ABC["sp"], "adam", {"hidden": al, "output": al}, n) for n in (1, 2))
    assert one != two


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_n_hidden_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="n_hidden must be an integer >= 1"):
        solve_c(ABC["sp"], "adam", "full", bad)  # type: ignore[arg-type]
