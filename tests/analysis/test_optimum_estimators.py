"""Validation of the optimum estimator (issue 14, item 4) on synthetic LR curves with known optima.

Each curve is L(x) = 2.5 + f(x) in x = log2(lr / lr*), the optimum at x = 0, sampled on an octave
or half-octave grid over [-4, 4] octaves whose offset from the optimum runs over a grid step;
noisy families add Gaussian noise of 0.01 nats (the seed spread documented for the
reproductions) per seed and LR, and 1 or 3 seeds are averaged. Families:

- lopsided: A (e^(k x) - 1 - k x) / (k^2 / 2), k = 1.5: curvature A = 0.03 nats per octave^2 at
  the optimum, nearly linear below it and steep above (a small LR undertrains, a large one
  nears divergence);
- flat-bottomed: 0.002 x^4 e^(x / 2): a quartic bottom (2 mnats at one octave), lopsided walls;
- noisy: the lopsided shape with k = 0.75, plus noise;
- noisy flat-bottomed: the flat-bottomed shape plus noise (the loss is within the noise over
  +-1.5 octaves, so no estimator places the optimum well; the loss cost of its error is tiny);
- diverging: the lopsided shape plus noise, and every run more than one octave above the
  optimum diverges;
- kinked: 0.01 x^2 below the optimum, 0.1 x^2 above (the curvature jumps tenfold at the
  optimum: a worst case for any quadratic).

The error of an estimate is |log2(lr_est / lr*)| in octaves; its loss cost is f at the
estimate. ``python tests/analysis/test_optimum_estimators.py`` prints the comparison table of
docs/sweeps.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from hptransfer.analysis import find_optima

A, NOISE = 0.03, 0.01
STEPS = {"octave": 1.0, "half-octave": 0.5}
N_OFFSETS, N_DRAWS = 16, 6


def _lopsided(k: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: A * (np.exp(k * x) - 1 - k * x) / (k * k / 2)


def _flat(x: np.ndarray) -> np.ndarray:
    return 0.002 * x**4 * np.exp(x / 2)


def _kinked(x: np.ndarray) -> np.ndarray:
    return np.where(x < 0, 0.01, 0.1) * x**2


#: family -> (shape f, noisy, divergence threshold in octaves above the optimum or None)
FAMILIES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], bool, float | None]] = {
    "lopsided": (_lopsided(1.5), False, None),
    "flat-bottomed": (_flat, False, None),
    "noisy": (_lopsided(0.75), True, None),
    "noisy flat-bottomed": (_flat, True, None),
    "diverging": (_lopsided(1.5), True, 1.0),
    "kinked": (_kinked, False, None),
}

#: mean error bound (octaves) of find_optima per family, on every grid and seed count
BOUNDS = {
    "lopsided": 0.25,
    "flat-bottomed": 0.2,
    "noisy": 0.2,
    "noisy flat-bottomed": 0.8,
    "diverging": 0.35,
    "kinked": 0.5,
}


def sweeps() -> pd.DataFrame:
    """All synthetic sweeps as one runs table: parameterization = family, optimizer = grid,
    width = the case number (one LR curve per case), seed, lr (lr* = 1e-3), status, loss."""
    rng = np.random.default_rng(0)
    rows, case = [], 0
    for family, (f, noisy, diverge) in FAMILIES.items():
        for grid, step in STEPS.items():
            for seeds in (1, 3) if noisy else (1,):
                for offset in (np.arange(N_OFFSETS) + 0.5) / N_OFFSETS * step:
                    for _ in range(N_DRAWS if noisy else 1):
                        x = np.arange(-4.0 - offset, 4.0 + 1e-9, step)
                        for s in range(seeds):
                            loss = 2.5 + f(x) + (rng.normal(0, NOISE, x.size) if noisy else 0)
                            div = np.zeros(x.size, bool) if diverge is None else x > diverge
                            rows += [
                                {"parameterization": family, "optimizer": grid, "width": case,
                                 "n_seeds": seeds, "seed": s, "lr": 1e-3 * 2.0**xi,
                                 "status": "diverged" if d else "ok",
                                 "final_eval_loss": np.nan if d else li}
                                for xi, li, d in zip(x, loss, div)
                            ]  # fmt: skip
                        case += 1
    return pd.DataFrame(rows)


def _quadratic_vertex(x: np.ndarray, y: np.ndarray, keep: np.ndarray) -> float:
    """Vertex of a least-squares quadratic through the kept points; the grid minimum when it
    has fewer than 3 points, opens downwards or lies outside them (as find_optima)."""
    best = float(x[np.argmin(y)])
    if keep.sum() < 3:
        return best
    c2, c1, _ = np.polyfit(x[keep], y[keep], 2)
    vertex = -c1 / (2 * c2) if c2 > 0 else np.nan
    return float(vertex) if x[keep].min() <= vertex <= x[keep].max() else best


def _loss_window(ratio: float) -> Callable[[np.ndarray, np.ndarray], float]:
    def estimate(x: np.ndarray, y: np.ndarray) -> float:
        keep = y <= ratio * y.min()
        if keep.sum() < 3:  # topped up with the points nearest the grid minimum
            keep = np.zeros(x.size, bool)
            keep[np.argsort(np.abs(x - x[np.argmin(y)]), kind="stable")[:3]] = True
        return _quadratic_vertex(x, y, keep)

    return estimate


def _lr_window(octaves: float) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda x, y: _quadratic_vertex(x, y, np.abs(x - x[np.argmin(y)]) <= octaves + 1e-9)


def _three_point_parabola(x: np.ndarray, y: np.ndarray) -> float:
    i = int(np.argmin(y))
    if i in (0, x.size - 1):
        return float(x[i])
    return _quadratic_vertex(x[i - 1 : i + 2], y[i - 1 : i + 2], np.ones(3, bool))


#: the alternatives find_optima's window was chosen against, on seed-mean curves
CANDIDATES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "quadratic, L <= 1.35 L_min": _loss_window(1.35),
    "quadratic, L <= 1.03 L_min": _loss_window(1.03),
    "quadratic, +-1.5 octaves": _lr_window(1.5),
    "quadratic, +-2 octaves": _lr_window(2.0),
    "3-point parabola": _three_point_parabola,
    "grid minimum": lambda x, y: float(x[np.argmin(y)]),
}
CHOSEN = "find_optima: quadratic, +-1 octave"


def estimates(df: pd.DataFrame) -> pd.DataFrame:
    """Per case: family, grid, seeds and each estimator's log2(lr_est / lr*)."""
    opt = find_optima(df, n_boot=0).set_index("width")
    out = []
    for case, g in df.groupby("width", sort=True):
        ok = g[g["status"] == "ok"]
        curve = ok.groupby("lr")["final_eval_loss"].mean()
        x, y = np.log2(curve.index.to_numpy() / 1e-3), curve.to_numpy()
        row = {"family": g["parameterization"].iloc[0], "grid": g["optimizer"].iloc[0],
               "seeds": int(g["n_seeds"].iloc[0]),
               CHOSEN: float(np.log2(opt.loc[case, "lr_interp"] / 1e-3))}  # fmt: skip
        row.update({name: est(x, y) for name, est in CANDIDATES.items()})
        out.append(row)
    return pd.DataFrame(out)


def error_table(est: pd.DataFrame) -> pd.DataFrame:
    """Mean error in octaves per (family, grid, seeds) and estimator."""
    names = [CHOSEN, *CANDIDATES]
    return (
        est.assign(**{n: est[n].abs() for n in names})
        .groupby(["family", "grid", "seeds"])[names]
        .mean()
    )


def loss_cost(est: pd.DataFrame) -> pd.Series:
    """Per estimator: the mean over cases of f at the estimate (nats above the true minimum)."""
    shapes = [FAMILIES[f][0] for f in est["family"]]
    return pd.Series(
        {
            n: np.mean([f(np.array(v)) for f, v in zip(shapes, est[n])])
            for n in [CHOSEN, *CANDIDATES]
        }
    )


@pytest.fixture(scope="module")
def est() -> pd.DataFrame:
    return estimates(sweeps())


def test_find_optima_error_is_bounded_on_every_family(est: pd.DataFrame) -> None:
    for (family, grid, seeds), err in error_table(est)[CHOSEN].items():
        assert err < BOUNDS[family], (family, grid, seeds, err)


def test_find_optima_is_the_best_candidate(est: pd.DataFrame) -> None:
    """The selection criterion: the lowest mean loss cost, and the lowest mean error over the
    cases (family x grid x seeds) to within 0.01 octave (the 3-point parabola comes within
    0.01: better without noise on half-octave grids, worse with it); the 1.35 loss window, the
    old default, errs by over an octave on lopsided curves."""
    cost, table = loss_cost(est), error_table(est)
    assert cost.idxmin() == CHOSEN, cost.to_dict()
    assert table.mean()[CHOSEN] <= table.mean().min() + 0.01, table.mean().to_dict()
    assert table.loc["lopsided", "quadratic, L <= 1.35 L_min"].min() > 1.0


if __name__ == "__main__":
    est = estimates(sweeps())
    t = error_table(est).groupby("family").mean().T
    t["mean (all cases)"] = error_table(est).mean()
    t["loss cost (mnats)"] = 1000 * loss_cost(est)
    print("| estimator | " + " | ".join(t.columns) + " |")
    print("|---" * (len(t.columns) + 1) + "|")
    for name, row in t.iterrows():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
