"""find_optima and lr_curves on synthetic loss surfaces with known optima."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hptransfer.analysis import find_optima, lr_curves

CURV = 0.1  # a in L = L* + a (ln lr - ln lr*)^2


def _rows(width: int, log_opt: float, l_star: float, ks: range, seed: int = 0) -> list[dict]:
    """Runs at lr = exp(log_opt) * 2^(k/2): an exact quadratic in ln lr around log_opt."""
    out = []
    for k in ks:
        lr = float(np.exp(log_opt) * 2 ** (k / 2))
        loss = l_star + CURV * (np.log(lr) - log_opt) ** 2
        out.append(
            {
                "run_id": f"w{width}k{k}s{seed}",
                "status": "ok",
                "parameterization": "mup",
                "optimizer": "adam",
                "width": width,
                "lr": lr,
                "seed": seed,
                "final_eval_loss": loss,
                "best_eval_loss": loss,
                "steps": 100,
            }
        )
    return out


def test_exact_quadratic_recovers_vertex_off_grid() -> None:
    # optimum halfway between grid points: grid gives an error of 2^(1/4), the fit none
    log_opt = np.log(1e-3)
    rows = _rows(64, log_opt, 3.0, range(-11, 12))
    df = pd.DataFrame(rows)
    df["lr"] *= 2**0.25
    df["final_eval_loss"] = 3.0 + CURV * (np.log(df["lr"]) - log_opt) ** 2
    opt = find_optima(df)
    assert len(opt) == 1
    row = opt.iloc[0]
    assert row["interp_ok"]
    assert row["lr_interp"] == pytest.approx(1e-3, rel=1e-6)
    assert row["loss_interp"] == pytest.approx(3.0, abs=1e-9)
    assert row["curvature"] == pytest.approx(CURV, rel=1e-6)
    assert abs(np.log2(row["lr_grid"] / 1e-3)) == pytest.approx(0.25)
    assert not row["at_edge"]
    # the window: the grid points within one octave of the best one (0.25 octave from lr*),
    # 5 on a half-octave grid
    assert row["n_points"] == 5
    assert row["fit_lr_hi"] / row["fit_lr_lo"] == pytest.approx(4.0)


def test_diverged_runs_excluded_from_fit_but_kept_in_df() -> None:
    rows = _rows(128, np.log(1e-3), 3.0, range(-6, 5))
    # a "diverged" run with a misleadingly low loss, an ok run with a NaN loss, and a failed run
    rows.append(
        {**rows[-1], "run_id": "d1", "lr": 2e-2, "status": "diverged", "final_eval_loss": 0.1}
    )
    rows.append({**rows[-1], "run_id": "d2", "lr": 4e-2, "status": "ok", "final_eval_loss": np.nan})
    rows.append(
        {
            **rows[-1],
            "run_id": "f1",
            "lr": 1e-3 * 2**0.25,
            "status": "failed",
            "final_eval_loss": 0.01,
        }
    )
    df = pd.DataFrame(rows)
    before = df.copy()
    opt = find_optima(df)
    row = opt.iloc[0]
    assert row["lr_interp"] == pytest.approx(1e-3, rel=1e-6)
    assert row["lr_grid"] == pytest.approx(1e-3)
    assert row["n_diverged"] == 2
    assert row["n_lrs"] == 11
    pd.testing.assert_frame_equal(df, before)
    curves = lr_curves(df)
    assert curves["diverged"].sum() == 2
    assert len(curves) == 13  # the failed run is ignored, not counted as diverged


def test_lr_with_any_diverged_seed_counts_as_diverged() -> None:
    rows = _rows(64, np.log(1e-3), 3.0, range(-6, 7), seed=0)
    rows += _rows(64, np.log(1e-3), 3.0, range(-6, 7), seed=1)
    rows[12] = {**rows[12], "status": "diverged", "final_eval_loss": np.nan}  # seed 0, k=6
    opt = find_optima(pd.DataFrame(rows), n_boot=0)
    assert opt.iloc[0]["n_lrs"] == 12
    assert opt.iloc[0]["n_diverged"] == 1


def test_at_edge_when_optimum_is_last_non_diverged_lr() -> None:
    # the loss keeps falling up to the last stable LR, then the runs diverge
    rows = _rows(64, np.log(1e-2), 3.0, range(-10, 1))
    rows += [
        {
            **rows[-1],
            "run_id": f"d{k}",
            "lr": 1e-2 * 2 ** (k / 2),
            "status": "diverged",
            "final_eval_loss": np.nan,
        }
        for k in (1, 2)
    ]
    rows += _rows(128, np.log(1e-3), 3.0, range(-6, 7))
    for r in rows[-13:]:
        r["width"] = 128
    opt = find_optima(pd.DataFrame(rows)).set_index("width")
    assert bool(opt.loc[64, "at_edge"])
    assert not bool(opt.loc[128, "at_edge"])
    assert opt.loc[64, "lr_grid"] == pytest.approx(1e-2)


def test_vertex_outside_fitted_range_falls_back_to_grid() -> None:
    # monotone (linear) loss in ln lr: no bracketed optimum; the fit must not extrapolate
    lrs = 1e-3 * 2 ** (np.arange(8) / 2)
    df = pd.DataFrame(
        {
            "run_id": [str(i) for i in range(8)],
            "status": "ok",
            "parameterization": "sp",
            "optimizer": "sgd",
            "width": 32,
            "lr": lrs,
            "seed": 0,
            "final_eval_loss": 3.0 - 0.05 * np.log(lrs / 1e-3) + 0.01 * np.log(lrs / 1e-3) ** 2,
        }
    )
    row = find_optima(df).iloc[0]
    assert not row["interp_ok"]
    assert row["at_edge"]
    assert row["lr_interp"] == row["lr_grid"] == pytest.approx(lrs[-1])
    assert row["loss_interp"] == row["loss_grid"]


def test_min_points_topped_up_with_nearest_points() -> None:
    # a grid of 2-octave steps: only the grid optimum lies within one octave of itself
    rows = _rows(64, np.log(1e-3), 0.1, range(-8, 9, 4))
    df = pd.DataFrame(rows)
    df["final_eval_loss"] = 0.1 + 5.0 * (np.log(df["lr"]) - np.log(1e-3)) ** 2
    row = find_optima(df, min_points=3).iloc[0]
    assert row["n_points"] == 3
    assert row["fit_lr_lo"] == pytest.approx(1e-3 * 2**-2)
    assert row["fit_lr_hi"] == pytest.approx(1e-3 * 2**2)
    assert row["curvature"] == pytest.approx(5.0, rel=1e-6)


def test_bootstrap_over_three_seeds_contains_truth() -> None:
    # seed s has its optimum at ln(1e-3) + d_s with d = (-0.3, 0, +0.3) on one shared grid:
    # the seed mean is a quadratic centred on the truth; resamples move it to either side by
    # at most 0.3 in ln lr
    rows = []
    for s, d in enumerate((-0.3, 0.0, 0.3)):
        for r in _rows(256, np.log(1e-3), 3.0, range(-8, 9), seed=s):
            r["final_eval_loss"] = 3.0 + CURV * (np.log(r["lr"] / 1e-3) - d) ** 2
            rows.append(r)
    row = find_optima(pd.DataFrame(rows), n_boot=200, seed=1).iloc[0]
    assert row["n_seeds"] == 3
    assert row["lr_interp"] == pytest.approx(1e-3, rel=1e-6)
    assert row["lr_interp_lo"] < 1e-3 < row["lr_interp_hi"]
    assert row["lr_interp_lo"] >= 1e-3 * np.exp(-0.3) * (1 - 1e-9)
    assert row["lr_interp_hi"] <= 1e-3 * np.exp(0.3) * (1 + 1e-9)


def test_single_seed_has_no_interval_and_groups_by_extra_columns() -> None:
    rows = _rows(64, np.log(1e-3), 3.0, range(-4, 5))
    rows += [{**r, "param.alignment": "full"} for r in _rows(64, np.log(2e-3), 3.0, range(-4, 5))]
    df = pd.DataFrame(rows)
    df["param.alignment"] = df["param.alignment"].fillna("none")
    opt = find_optima(df, by=("parameterization", "optimizer", "param.alignment"))
    assert len(opt) == 2
    assert opt["lr_interp_lo"].isna().all()
    got = opt.set_index("param.alignment")["lr_interp"]
    assert got["none"] == pytest.approx(1e-3)
    assert got["full"] == pytest.approx(2e-3)


def test_missing_by_column_is_named() -> None:
    df = pd.DataFrame(_rows(64, np.log(1e-3), 3.0, range(-2, 3)))
    with pytest.raises(KeyError, match="param.alignment"):
        find_optima(df, by=("parameterization", "param.alignment"))


def test_width_with_only_diverged_runs_gives_nan_row() -> None:
    rows = _rows(64, np.log(1e-3), 3.0, range(-3, 4))
    for r in rows:
        r.update(status="diverged", final_eval_loss=np.nan)
    row = find_optima(pd.DataFrame(rows)).iloc[0]
    assert np.isnan(row["lr_interp"]) and np.isnan(row["loss_grid"])
    assert row["n_points"] == 0 and not row["interp_ok"] and row["at_edge"]
