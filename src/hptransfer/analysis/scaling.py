"""Scaling laws over width and [K]'s transfer metrics.

Given the per-width optima of `find_optima`, each setting is summarised by three fits:

- optimal LR:  eta*(N) = C N^-beta          (least squares of ln eta* on ln N)
- best loss:   L*(N)   = L_inf + A N^-alpha  (nonlinear least squares)
- curvature:   a(N)    ~ N^gamma_log         (least squares of ln a on ln N)

where a is the curvature in natural-log LR of L = L* + a (ln eta - ln eta*)^2. The curvature
in linear LR, L = L* + (C_2 / 2) (eta - eta*)^2, is C_2 = 2 a / eta*^2, so C_2 ~ N^gamma with
gamma = gamma_log + 2 beta. Both are reported; kappa uses the linear-LR gamma, as [K] does.

[K]'s metrics, as computed here:
- E: fit quality of the optimal-LR law. [K]'s formula is not public; ours is the RMS over
  widths of the natural-log residual ln eta*(N) - ln(C N^-beta), on interpolated optima.
- kappa = alpha - 2 beta + gamma (= alpha + gamma_log), from [K]'s released code: the extra
  loss of a relative LR error eps, as a fraction of the reducible loss A N^-alpha, scales like
  N^kappa eps^2; kappa < 0 means transfer becomes more forgiving with width.
- R_inf: L_inf of the setting minus L_inf of a reference setting.

The loss law (alpha, L_inf, hence kappa and R_inf) is fitted on each width's best grid loss
(``loss_grid``, the seed mean at the best grid LR), as [K]'s released code does;
``optimum_loss="interpolated"`` fits the quadratic's vertex ``loss_interp`` instead, which
lies below every measured loss by an amount that depends on the grid's offset from the optimum.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

from hptransfer.analysis.optimum import DEFAULT_BY, lr_curves

#: which per-width loss the loss law is fitted on: find_optima's column for each choice
OPTIMUM_LOSSES = {"grid": "loss_grid", "interpolated": "loss_interp"}

_ALPHA_MAX = 5.0
_ALPHA_GRID = np.linspace(0.01, _ALPHA_MAX, 250)

_FIT_COLUMNS = (
    "n_widths",
    "width_min",
    "width_max",
    "n_at_edge",
    "C",
    "beta",
    "E",
    "drift_per_doubling",
    "L_inf",
    "A",
    "alpha",
    "R_inf",
    "gamma_log",
    "gamma",
    "kappa",
    "transfer_penalty",
    "transfer_penalty_pct",
    "extrap_penalty",
    "extrap_penalty_pct",
)

Fit3 = tuple[float | None, float | None, float | None]


def _finite_pairs(widths: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, ...]:
    """Widths and values as float arrays, keeping pairs that are finite with width > 0."""
    n = np.asarray(widths, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(n) & np.isfinite(v) & (n > 0)
    return n[keep], v[keep]


def _log_log_fit(n: np.ndarray, v: np.ndarray) -> tuple[float, float, float] | None:
    """Fit ln v = c + s ln n by least squares; return (exp(c), s, RMS residual) or None."""
    keep = v > 0
    n, v = n[keep], v[keep]
    if np.unique(n).size < 2:
        return None
    x, y = np.log(n), np.log(v)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    return float(np.exp(intercept)), float(slope), float(np.sqrt(np.mean(resid**2)))


def fit_lr_law(widths: Sequence[float], lrs: Sequence[float]) -> Fit3:
    """Fit eta*(N) = C N^-beta by least squares in log-log; return (C, beta, E).

    E is our definition of [K]'s fit-quality metric: the RMS over widths of the natural-log
    residual, E = sqrt(mean_N (ln eta*(N) - ln(C N^-beta))^2). E is 0 for exactly two widths.
    Non-finite or non-positive points are skipped; (None, None, None) with fewer than 2 widths.
    """
    fit = _log_log_fit(*_finite_pairs(widths, lrs))
    if fit is None:
        return None, None, None
    c, slope, rms = fit
    return c, -slope, rms


def fit_loss_law(widths: Sequence[float], losses: Sequence[float]) -> Fit3:
    """Fit L*(N) = L_inf + A N^-alpha; return (L_inf, A, alpha).

    The fit runs on z = N / min(N) for conditioning. alpha is bounded to [0, 5]; L_inf and A
    are free (A < 0 describes a loss that worsens with width). The initial point comes from a
    profile over alpha, where for fixed alpha the model is linear in (L_inf, A) and solved
    exactly; scipy's curve_fit then refines all three. Needs 3 distinct widths; returns
    (None, None, None) when there are fewer or the fit fails.
    """
    n, loss = _finite_pairs(widths, losses)
    if np.unique(n).size < 3:
        return None, None, None
    n0 = float(n.min())
    z = n / n0

    def model(z: np.ndarray, l_inf: float, a: float, alpha: float) -> np.ndarray:
        return l_inf + a * z**-alpha

    basis = z[None, :] ** -_ALPHA_GRID[:, None]  # (grid, widths)
    best = (np.inf, (float(loss.min()), 0.0, 1.0))
    for alpha, b in zip(_ALPHA_GRID, basis):
        design = np.stack([np.ones_like(b), b], axis=1)
        coef, *_ = np.linalg.lstsq(design, loss, rcond=None)
        sse = float(np.sum((design @ coef - loss) ** 2))
        if sse < best[0]:
            best = (sse, (float(coef[0]), float(coef[1]), float(alpha)))
    try:
        with warnings.catch_warnings():
            # with exactly 3 widths the covariance is undefined; it is not used
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, _ = curve_fit(
                model,
                z,
                loss,
                p0=best[1],
                bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, _ALPHA_MAX]),
                maxfev=5000,
            )
    except (RuntimeError, ValueError):
        return None, None, None
    l_inf, a_z, alpha = map(float, popt)
    if not np.all(np.isfinite(popt)):
        return None, None, None
    return l_inf, a_z * n0**alpha, alpha


def _nan(x: float | None) -> float:
    return np.nan if x is None else float(x)


def _loss_at(opt: pd.Series, lr: float, curve: pd.DataFrame | None) -> float:
    """Loss of one (setting, width) at base LR `lr`.

    Inside the fitted LR range of an accepted quadratic: L* + a (ln lr - ln eta*)^2. Otherwise
    the seed-mean loss measured at the grid LR nearest in ln lr, inf if that LR diverged, NaN
    when no measurement is available.
    """
    if not np.isfinite(lr):
        return np.nan
    if opt["interp_ok"] and opt["fit_lr_lo"] <= lr <= opt["fit_lr_hi"]:
        return float(opt["loss_interp"] + opt["curvature"] * np.log(lr / opt["lr_interp"]) ** 2)
    if curve is None or curve.empty:
        return np.nan
    i = int(np.argmin(np.abs(np.log(curve["lr"].to_numpy(dtype=float) / lr))))
    row = curve.iloc[i]
    return np.inf if row["diverged"] else float(row["loss"])


def _penalty(loss: float, best: float) -> tuple[float, float]:
    """Absolute (nats) and percent penalty of `loss` over `best`."""
    pen = loss - best
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(pen), float(100.0 * pen / best)


def _setting_row(
    g: pd.DataFrame, curves: dict[int, pd.DataFrame] | None, loss_column: str
) -> dict[str, float]:
    """All fitted quantities of one setting; g holds its optima rows sorted by width; the loss
    law is fitted on ``loss_column``."""
    widths = g["width"].to_numpy(dtype=float)
    c, beta, e = fit_lr_law(widths, g["lr_interp"])
    l_inf, a, alpha = fit_loss_law(widths, g[loss_column])
    curv_ok = g["interp_ok"].to_numpy(dtype=bool) & (g["curvature"].to_numpy() > 0)
    curv = _log_log_fit(*_finite_pairs(widths[curv_ok], g["curvature"].to_numpy()[curv_ok]))
    gamma_log = np.nan if curv is None else curv[1]
    beta_f, alpha_f = _nan(beta), _nan(alpha)
    gamma = gamma_log + 2.0 * beta_f

    out = {
        "n_widths": int(np.unique(widths).size),
        "width_min": float(widths.min()),
        "width_max": float(widths.max()),
        "n_at_edge": int(g["at_edge"].sum()),
        "C": _nan(c),
        "beta": beta_f,
        "E": _nan(e),
        "drift_per_doubling": -beta_f,
        "L_inf": _nan(l_inf),
        "A": _nan(a),
        "alpha": alpha_f,
        "gamma_log": gamma_log,
        "gamma": gamma,
        "kappa": alpha_f - 2.0 * beta_f + gamma,
    }
    pens = dict.fromkeys(
        ["transfer_penalty", "transfer_penalty_pct", "extrap_penalty", "extrap_penalty_pct"],
        np.nan,
    )
    if out["n_widths"] >= 2:
        small, large = g.iloc[0], g.iloc[-1]
        curve = None if curves is None else curves.get(int(large["_row"]))
        best = float(large["loss_interp"])
        lr_src = float(small["lr_interp"])
        pens["transfer_penalty"], pens["transfer_penalty_pct"] = _penalty(
            _loss_at(large, lr_src, curve), best
        )
        c_x, beta_x, _ = fit_lr_law(widths[:-1], g["lr_interp"].iloc[:-1])
        if c_x is not None and beta_x is not None:
            lr_x = c_x * float(large["width"]) ** -beta_x
            pens["extrap_penalty"], pens["extrap_penalty_pct"] = _penalty(
                _loss_at(large, lr_x, curve), best
            )
    return {**out, **pens}


def _reference_l_inf(
    fits: pd.DataFrame, by: Sequence[str], reference: str | Mapping[str, object] | None
) -> np.ndarray:
    """L_inf of each setting's reference (see fit_transfer), NaN where none matches."""
    l_inf = fits["L_inf"].to_numpy(dtype=float)
    if reference is None:
        finite = l_inf[np.isfinite(l_inf)]
        return np.full(len(fits), finite.min() if finite.size else np.nan)
    ref = {by[0]: reference} if isinstance(reference, str) else dict(reference)
    unknown = [k for k in ref if k not in by]
    if unknown:
        raise KeyError(f"reference names columns {unknown} that are not in by={list(by)}")
    is_ref = np.ones(len(fits), dtype=bool)
    for col, val in ref.items():
        is_ref &= (fits[col] == val).to_numpy()
    if not is_ref.any():
        raise ValueError(f"no setting matches reference={reference!r}")
    others = [c for c in by if c not in ref]
    refs = fits.loc[is_ref, [*others, "L_inf"]].groupby(others, dropna=False)["L_inf"].min()
    if not others:
        return np.full(len(fits), float(refs.min()) if len(refs) else np.nan)
    merged = fits[others].merge(refs.rename("_ref").reset_index(), on=others, how="left")
    return merged["_ref"].to_numpy(dtype=float)


def fit_transfer(
    optima: pd.DataFrame,
    df: pd.DataFrame | None = None,
    by: Sequence[str] = DEFAULT_BY,
    reference: str | Mapping[str, object] | None = None,
    loss: str = "final_eval_loss",
    optimum_loss: str = "grid",
) -> pd.DataFrame:
    """Scaling laws and transfer metrics per setting, from the output of `find_optima`.

    Returns one row per setting (by...) with columns:
    - n_widths, width_min, width_max, n_at_edge (widths whose optimum is not bracketed);
    - C, beta, E: eta*(N) = C N^-beta on lr_interp, E our RMS natural-log residual;
    - drift_per_doubling = -beta: log2 of the factor eta* moves by per doubling of width;
    - L_inf, A, alpha: L*(N) = L_inf + A N^-alpha (needs 3 widths) on the best grid loss
      loss_grid ([K]'s released code), or on loss_interp with optimum_loss="interpolated";
    - gamma_log, gamma: curvature exponents in log and linear LR (gamma = gamma_log + 2 beta),
      fitted on widths with an accepted quadratic;
    - kappa = alpha - 2 beta + gamma;
    - R_inf = L_inf - L_inf of the reference. reference=None: the lowest L_inf among all
      settings given. A string names a value of by[0] (e.g. "sp"), a mapping names values of
      several by columns; the reference of each setting is then the matching setting that
      agrees on the remaining by columns (e.g. {"parameterization": "sp"} compares each
      parameterization to sp under the same optimizer);
    - transfer_penalty (nats) and transfer_penalty_pct (percent of the best loss there): loss at
      the largest width when using the smallest width's eta*, minus the best loss there;
    - extrap_penalty, extrap_penalty_pct: the same with eta* predicted by the LR law fitted on all
      widths but the largest (needs 3 widths).
    The loss at a transferred LR comes from the largest width's quadratic inside its fitted
    range, else from the grid point nearest in ln LR in `df` (inf if it diverged; NaN without
    df). Values that cannot be computed are NaN; this function does not raise on thin data.
    """
    if optimum_loss not in OPTIMUM_LOSSES:
        raise ValueError(
            f"optimum_loss={optimum_loss!r}; choose one of {', '.join(OPTIMUM_LOSSES)}"
        )
    by = list(by)
    opt = optima.reset_index(drop=True).copy()
    opt["_row"] = np.arange(len(opt))
    curves = None
    if df is not None:
        lc = lr_curves(df, by, loss)
        matched = opt[[*by, "width", "_row"]].merge(lc, on=[*by, "width"], how="inner")
        curves = {int(k): v.sort_values("lr") for k, v in matched.groupby("_row")}

    records = []
    for _, g in opt.groupby(by, dropna=False, sort=True):
        g = g.sort_values("width")
        row = _setting_row(g, curves, OPTIMUM_LOSSES[optimum_loss])
        records.append({**g.iloc[0][by].to_dict(), **row})
    fits = pd.DataFrame.from_records(records, columns=[*by, *_FIT_COLUMNS])
    if not fits.empty:
        fits["R_inf"] = fits["L_inf"].to_numpy(dtype=float) - _reference_l_inf(fits, by, reference)
    return fits
