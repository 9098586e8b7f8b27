"""Per-width optimal learning rate from an LR sweep.

For one setting (parameterization, optimizer, other swept keys) and one width N, a sweep gives
the loss L(eta) on a grid of base LRs eta, possibly for several seeds. This module turns that
into the optimum eta*(N), L*(N) and the curvature a(N) of the quadratic model, in natural log,

    L(eta) = L* + a (ln eta - ln eta*)^2,

fitted by least squares over the grid points within one octave (a factor 2 in eta,
`WINDOW_OCTAVES`) of the best grid point, at least `min_points` of them: the best point and
its two neighbours on an octave grid, five points on a half-octave grid. This is the one
estimator of the package (report, plots and reproductions all use it). It was chosen on
synthetic LR curves with known optima (lopsided, flat-bottomed, noisy, diverging on one side,
kinked; octave and half-octave grids; 1 and 3 seeds), against a window of the loss (L <= 1.35
L_min, the value of [K]'s released figures; L <= 1.03 L_min), wider LR windows, the 3-point
parabola and the raw grid minimum: it had the lowest loss cost of its errors and the lowest
mean error (0.27 octave; the 3-point parabola within 0.01); the 1.35 loss window put lopsided
optima 1 to 1.5 octaves off, because at losses of a few nats it spans the whole curve
(docs/sweeps.md has the table; tests/analysis/test_optimum_estimators.py checks it). A window
in ln eta, unlike one in L, does not depend on the loss level.

Run status conventions (one rule, used everywhere in analysis):
- usable: status "ok" and a finite loss;
- diverged: status "diverged", or status "ok" with a non-finite loss;
- ignored: "failed", "running", "pending" (they say nothing about the LR).
An LR at which any seed diverged counts as diverged at that width. Nothing is dropped from the
caller's DataFrame; exclusions only affect the fits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DEFAULT_BY: tuple[str, ...] = ("parameterization", "optimizer")

_BOOT_PERCENTILES = (16.0, 84.0)

WINDOW_OCTAVES = 1.0
"""The quadratic is fitted to the grid points within this many octaves (log2 of eta) of the
best grid point (see the module docstring)."""


def _check_columns(df: pd.DataFrame, by: Sequence[str], loss: str) -> list[str]:
    """Return the (setting..., width) key list, or say which columns the frame lacks."""
    need = [*by, "width", "lr", "status", loss]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KeyError(
            f"results frame lacks columns {missing}; it has {sorted(map(str, df.columns))}. "
            "Pass by=... naming only swept columns that exist (load_runs() produces them)."
        )
    return [*by, "width"]


def _classify(df: pd.DataFrame, loss: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Split runs into usable and diverged (see module docstring); return (value, ok, div)."""
    status = df["status"].astype(str)
    value = pd.to_numeric(df[loss], errors="coerce").astype(float)
    finite = pd.Series(np.isfinite(value.to_numpy()), index=df.index)
    ok = (status == "ok") & finite
    div = (status == "diverged") | ((status == "ok") & ~finite)
    return value, ok, div


def lr_curves(
    df: pd.DataFrame, by: Sequence[str] = DEFAULT_BY, loss: str = "final_eval_loss"
) -> pd.DataFrame:
    """Seed-aggregated loss per (setting, width, lr): the curves an LR-sweep plot draws.

    Returns one row per (by..., width, lr) that has at least one usable or diverged run, with
    columns by..., width, lr, loss (mean over usable seeds, NaN if none), loss_std (sample std
    over usable seeds), n_ok, n_diverged and diverged (n_diverged > 0), sorted by key.
    """
    keys = [*_check_columns(df, by, loss), "lr"]
    value, ok, div = _classify(df, loss)
    work = df.loc[ok | div, keys].copy()
    work["_loss"] = value.where(ok)[ok | div]
    work["_ok"] = ok[ok | div].astype(int)
    work["_div"] = div[ok | div].astype(int)
    out = (
        work.groupby(keys, dropna=False, sort=True)
        .agg(
            loss=("_loss", "mean"),
            loss_std=("_loss", "std"),
            n_ok=("_ok", "sum"),
            n_diverged=("_div", "sum"),
        )
        .reset_index()
    )
    out["diverged"] = out["n_diverged"] > 0
    return out


def _fit_quadratic(x: np.ndarray, y: np.ndarray, min_points: int) -> dict[str, np.ndarray]:
    """Batched quadratic fit of y against x = ln(lr), one fit per row of y.

    x has shape (P,) (sorted), y shape (B, P) with NaN where a point is missing. Each row keeps
    the points within `WINDOW_OCTAVES` of its grid optimum, topped up with the points nearest in
    x to the grid optimum until min_points are kept, then solves the 3x3 normal equations of
    y = c0 + c1 u + c2 u^2 with u = x - x_best (centred for conditioning). The vertex gives
    ln eta* = x_best - c1 / (2 c2), L* = c0 - c1^2 / (4 c2) and a = c2; the fit is accepted
    (ok) when at least 3 points are kept, a > 0 and the vertex lies inside the kept x range.
    Otherwise the grid optimum stands in for the vertex.
    """
    if x.size == 0:
        nan = np.full(y.shape[0], np.nan)
        none = np.zeros(y.shape[0], dtype=int)
        return {
            "x_best": nan,
            "y_best": nan,
            "x_interp": nan,
            "y_interp": nan,
            "curvature": nan,
            "n_points": none,
            "ok": none.astype(bool),
            "x_lo": nan,
            "x_hi": nan,
        }
    rows = np.arange(y.shape[0])
    finite = np.isfinite(y)
    y_inf = np.where(finite, y, np.inf)
    i_best = np.argmin(y_inf, axis=1)
    y_best = y_inf[rows, i_best]
    x_best = x[i_best]
    dist = np.where(finite, np.abs(x[None, :] - x_best[:, None]), np.inf)
    keep = dist <= WINDOW_OCTAVES * np.log(2.0) * (1.0 + 1e-9)  # a grid point at 1 octave too
    rank = dist.argsort(axis=1, kind="stable").argsort(axis=1)
    short = keep.sum(axis=1) < min_points
    keep |= short[:, None] & (rank < min_points) & finite
    n_points = keep.sum(axis=1)

    u = np.where(keep, x[None, :] - x_best[:, None], 0.0)
    w = keep.astype(float)
    yk = np.where(keep, y, 0.0)
    s = [np.sum(w * u**k, axis=1) for k in range(5)]
    t = [np.sum(w * u**k * yk, axis=1) for k in range(3)]
    mat = np.stack([np.stack(s[0:3], -1), np.stack(s[1:4], -1), np.stack(s[2:5], -1)], axis=1)
    rhs = np.stack(t, axis=-1)
    fittable = n_points >= 3
    mat[~fittable] = np.eye(3)
    rhs[~fittable] = 0.0
    c0, c1, c2 = np.linalg.solve(mat, rhs[..., None])[..., 0].T

    u_lo = np.where(keep, u, np.inf).min(axis=1)
    u_hi = np.where(keep, u, -np.inf).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        u_star = -c1 / (2.0 * c2)
        l_star = c0 - c1**2 / (4.0 * c2)
    ok = fittable & (c2 > 0) & (u_star >= u_lo) & (u_star <= u_hi)
    has_data = np.isfinite(y_best)
    return {
        "x_best": np.where(has_data, x_best, np.nan),
        "y_best": np.where(has_data, y_best, np.nan),
        "x_interp": np.where(ok, x_best + u_star, np.where(has_data, x_best, np.nan)),
        "y_interp": np.where(ok, l_star, np.where(has_data, y_best, np.nan)),
        "curvature": np.where(fittable, c2, np.nan),
        "n_points": n_points,
        "ok": ok,
        "x_lo": np.where(n_points > 0, x_best + u_lo, np.nan),
        "x_hi": np.where(n_points > 0, x_best + u_hi, np.nan),
    }


def _seed_matrix(
    lr: np.ndarray, seed: np.ndarray, value: np.ndarray, lrs: np.ndarray
) -> np.ndarray:
    """Mean loss per (seed, lr) as a (n_seeds, len(lrs)) matrix, NaN where a seed has no run."""
    seeds, s_idx = np.unique(seed, return_inverse=True)
    l_idx = np.searchsorted(lrs, lr)
    total = np.zeros((seeds.size, lrs.size))
    count = np.zeros((seeds.size, lrs.size))
    np.add.at(total, (s_idx, l_idx), value)
    np.add.at(count, (s_idx, l_idx), 1.0)
    with np.errstate(invalid="ignore"):
        return total / np.where(count > 0, count, np.nan)


def _seed_mean(mat: np.ndarray, axis: int) -> np.ndarray:
    """Mean over seeds ignoring missing entries, NaN (not a warning) where all are missing."""
    count = np.isfinite(mat).sum(axis=axis)
    total = np.nansum(mat, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def find_optima(
    df: pd.DataFrame,
    by: Sequence[str] = DEFAULT_BY,
    loss: str = "final_eval_loss",
    min_points: int = 3,
    n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Optimal LR and loss per (setting, width) of an LR sweep.

    Seeds are averaged per LR first; the quadratic L = L* + a (ln eta - ln eta*)^2 is then fitted
    to the points within one octave of the best grid point (at least `min_points`, topped up
    with the grid points nearest in ln eta to the grid optimum; see the module docstring).
    Diverged and ignored runs are excluded from the fits; an LR where any seed diverged is
    excluded at that width.

    With several seeds, a bootstrap over seeds (n_boot resamples, seeds drawn with replacement,
    the whole fit redone on each) gives lr_interp_lo / lr_interp_hi as the 16th / 84th
    percentiles of the interpolated optimum (about +-1 sigma). n_boot=0 skips it.

    Returns one row per (by..., width) with columns:
    - lr_grid, loss_grid: the best grid point (seed mean);
    - lr_interp, loss_interp: the vertex of the quadratic, or the grid optimum when interp_ok
      is False;
    - curvature: a of the quadratic in natural-log LR (nats per ln(lr)^2), NaN with < 3 points;
    - interp_ok: the quadratic was used (>= 3 points, a > 0, vertex inside the fitted range);
    - n_points: points in the fit; fit_lr_lo, fit_lr_hi: the LR range they span;
    - at_edge: the grid optimum is the smallest or largest non-diverged LR (not bracketed),
      also True when fewer than 2 usable LRs exist;
    - n_lrs: usable LRs; n_diverged: diverged LRs; n_seeds: seeds with a usable run;
    - lr_interp_lo, lr_interp_hi: bootstrap interval (NaN with one seed or n_boot=0).
    """
    cell_keys = _check_columns(df, by, loss)
    value, ok, div = _classify(df, loss)
    use = ok | div
    work = df.loc[use, [*cell_keys, "lr"]].copy()
    work["_seed"] = df.loc[use, "seed"].to_numpy() if "seed" in df.columns else 0
    work["_loss"] = value[use].to_numpy()
    work["_ok"] = ok[use].to_numpy()
    work["_cell"] = work.groupby(cell_keys, dropna=False, sort=True).ngroup()
    labels = work.groupby("_cell")[cell_keys].first()
    rng = np.random.default_rng(seed)

    records = []
    for cell, g in work.groupby("_cell", sort=True):
        lr_all = g["lr"].to_numpy(dtype=float)
        is_ok = g["_ok"].to_numpy(dtype=bool)
        lrs, l_idx = np.unique(lr_all, return_inverse=True)
        n_ok = np.bincount(l_idx, weights=is_ok, minlength=lrs.size)
        n_div = np.bincount(l_idx, weights=~is_ok, minlength=lrs.size)
        good = (n_ok > 0) & (n_div == 0)
        lrs_good = lrs[good]
        sel = is_ok & good[l_idx]
        mat = _seed_matrix(
            lr_all[sel], g["_seed"].to_numpy()[sel], g["_loss"].to_numpy()[sel], lrs_good
        )
        x = np.log(lrs_good)
        fit = _fit_quadratic(x, _seed_mean(mat, axis=0)[None, :], min_points)
        at_edge = x.size < 2 or fit["x_best"][0] in (x[0], x[-1])

        lo = hi = np.nan
        if mat.shape[0] > 1 and n_boot > 0:
            draw = rng.integers(0, mat.shape[0], size=(n_boot, mat.shape[0]))
            boot = _fit_quadratic(x, _seed_mean(mat[draw], axis=1), min_points)
            xs = boot["x_interp"][np.isfinite(boot["x_interp"])]
            if xs.size:
                lo, hi = np.exp(np.percentile(xs, _BOOT_PERCENTILES))

        records.append(
            {
                **labels.loc[cell].to_dict(),
                "lr_grid": float(np.exp(fit["x_best"][0])),
                "loss_grid": float(fit["y_best"][0]),
                "lr_interp": float(np.exp(fit["x_interp"][0])),
                "loss_interp": float(fit["y_interp"][0]),
                "curvature": float(fit["curvature"][0]),
                "interp_ok": bool(fit["ok"][0]),
                "n_points": int(fit["n_points"][0]),
                "fit_lr_lo": float(np.exp(fit["x_lo"][0])),
                "fit_lr_hi": float(np.exp(fit["x_hi"][0])),
                "at_edge": bool(at_edge),
                "n_lrs": int(good.sum()),
                "n_diverged": int((n_div > 0).sum()),
                "n_seeds": int(mat.shape[0]),
                "lr_interp_lo": float(lo),
                "lr_interp_hi": float(hi),
            }
        )
    columns = [
        *cell_keys,
        "lr_grid",
        "loss_grid",
        "lr_interp",
        "loss_interp",
        "curvature",
        "interp_ok",
        "n_points",
        "fit_lr_lo",
        "fit_lr_hi",
        "at_edge",
        "n_lrs",
        "n_diverged",
        "n_seeds",
        "lr_interp_lo",
        "lr_interp_hi",
    ]
    return pd.DataFrame.from_records(records, columns=columns)
