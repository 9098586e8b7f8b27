"""The base LR to use at a target width, with an interval, and the setting the data recommend.

For each setting (the `by` columns: parameterization, optimizer, ...) the per-width optima of
`find_optima` and the law eta*(N) = C N^-beta of `fit_lr_law` give two candidate answers at
the target width N_t:

- keep:        eta_keep = exp(mean over swept widths of ln eta*(N))   (the law with beta = 0)
- extrapolate: eta_extr = C N_t^-beta

Uncertainty comes from a residual bootstrap of the per-width fits. At each width, every
usable run (each seed at each LR) inside the window of find_optima's accepted quadratic
L = L* + a (ln eta - ln eta*)^2 has a residual r = L - fit; the residuals of a setting are
pooled over its widths and scaled by sqrt(n / (n - 3 k)) (n residuals, k quadratics, 3
parameters each) to undo the shrinkage of least squares. A replicate redraws the loss of every
such run as fit + a pooled residual, refits the quadratic on the same window (all replicates in
one least-squares solve) and takes its vertex (the better end of the window when the vertex
falls outside or the refit is not convex); widths without an accepted quadratic keep their
optimum. The law's least-squares line in log-log then gives replicate b's beta_b, eta_keep_b
and eta_extr_b.

The rule (explicit, and the same in every replicate):
- the level-`level` bootstrap interval [beta_lo, beta_hi] of beta contains 0 -> keep (the data
  cannot tell the optimum from one that does not move with width); otherwise -> extrapolate.
- Replicate b decides with its own interval, taken as the full-data interval shifted by
  beta_b - beta: keep_b iff beta_lo + (beta_b - beta) <= 0 <= beta_hi + (beta_b - beta).
  Its answer is eta_keep_b or eta_extr_b accordingly, so the interval [lr_lo, lr_hi] covers
  the noise in the optima AND the choice between the two rules; keep_share is the fraction
  of replicates that kept.
- The interval is the percentile interval of ln(answer_b), widened about its median by
  t_nu(q) / z(q), q = (1 + level) / 2, with nu = the LR points in the windows minus 3 per
  quadratic. The percentile interval alone treats each quadratic's curvature as known; with
  few points per window it is not (a replicate's spread scales with 1 / a), and over repeated
  noisy sweeps it covered ~74% at level 0.8. Student's t for the curves' degrees of freedom
  brings it to the nominal rate (tests/analysis/test_predict.py checks 80% +- 2.5 sigma over
  300 draws, for keep and for extrapolate).

The expected loss at N_t is the loss law L*(N) = L_inf + A N^-alpha (`fit_loss_law` on the
loss at each width's interpolated optimum; needs three widths), a point estimate. `recommend`
picks the setting with the lowest expected loss; settings within TIE_PCT percent of it are
tied, and ties go to the better transfer (keep before extrapolate, then the smaller |beta|,
then the smaller E).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from hptransfer.analysis.optimum import DEFAULT_BY, find_optima
from hptransfer.analysis.scaling import fit_loss_law, fit_lr_law
from hptransfer.errors import ConfigError

LEVEL = 0.9
"""Default coverage of the LR interval (5th to 95th percentile of the replicates)."""

FAR_FACTOR = 8.0
"""A target more than this many times the largest swept width is flagged as far."""

E_POOR = 0.1
"""A fit with E (RMS natural-log residual of the optima around the law, ours) above this is
flagged as poor: the optima stray from a power law by more than ~10% RMS."""

TIE_PCT = 0.5
"""Expected losses within this many percent of the best count as tied in `recommend`."""

_TOL = 1e-9

COLUMNS = (
    "label", "rule", "lr", "lr_lo", "lr_hi", "keep_share", "lr_keep", "lr_extrapolate",
    "beta", "beta_lo", "beta_hi", "drift_per_doubling", "C", "E", "loss",
    "n_widths", "width_min", "width_max", "n_at_edge", "n_residuals", "warnings",
)  # fmt: skip


def label_of(values: Sequence[object]) -> str:
    """A setting's name: its non-missing `by` values joined by " / " (e.g. "mup / adam")."""
    return " / ".join(str(v) for v in values if not (v is None or v != v))


def _usable(df: pd.DataFrame, loss: str) -> pd.Series:
    value = pd.to_numeric(df[loss], errors="coerce")
    return (df["status"].astype(str) == "ok") & np.isfinite(value.to_numpy(dtype=float))


def _window_runs(df: pd.DataFrame, optima: pd.DataFrame, by: list[str], loss: str) -> pd.DataFrame:
    """The runs inside the accepted quadratic fits: by..., width, u = ln(lr / lr_interp), the
    fitted loss L* + a u^2 and the residual (measured minus fitted)."""
    rows = df[df["status"].astype(str).isin(["ok", "diverged"])].copy()
    rows["_y"] = pd.to_numeric(rows[loss], errors="coerce").astype(float)
    ok = _usable(rows, loss).to_numpy()
    keys = [*by, "width"]
    bad_lr = rows.loc[~ok, [*keys, "lr"]].drop_duplicates().assign(_bad=True)
    cols = [*keys, "lr_interp", "loss_interp", "curvature", "interp_ok", "fit_lr_lo", "fit_lr_hi"]
    rows = rows.merge(optima[cols], on=keys, how="left").merge(bad_lr, on=[*keys, "lr"], how="left")
    lr = rows["lr"].to_numpy(dtype=float)
    inside = (
        ok
        & rows["interp_ok"].fillna(False).to_numpy(dtype=bool)
        & rows["_bad"].isna().to_numpy()
        & (lr >= rows["fit_lr_lo"].to_numpy() * (1 - 1e-12))
        & (lr <= rows["fit_lr_hi"].to_numpy() * (1 + 1e-12))
    )
    rows = rows[inside].copy()
    rows["_u"] = np.log(rows["lr"].to_numpy(dtype=float) / rows["lr_interp"].to_numpy(dtype=float))
    rows["_fit"] = rows["loss_interp"] + rows["curvature"] * rows["_u"] ** 2
    rows["_r"] = rows["_y"] - rows["_fit"]
    return rows


def _replicate_optima(
    runs: pd.DataFrame, mine: pd.DataFrame, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, int, int]:
    """ln eta*(N) of one setting per width (rows of ``mine``) and replicate: (widths, n_boot).

    Each accepted quadratic is refitted (least squares, all three coefficients) to its own
    window's runs with the losses redrawn as fitted + a pooled, dof-corrected residual; the
    replicate's optimum is the refit's vertex, or the better end of the window when the vertex
    falls outside it or the refit is not convex. Widths without an accepted quadratic keep
    their optimum. Also returns the runs resampled (0: none, the fits use every point) and the
    curves' degrees of freedom nu (LR points in the windows minus 3 per quadratic).
    """
    ln_opt = np.tile(np.log(mine["lr_interp"].to_numpy(dtype=float))[:, None], (1, n_boot))
    per_width = dict(iter(runs.groupby("width")))
    groups = [per_width.get(w, runs.iloc[:0]) for w in mine["width"]]
    n = sum(len(g) for g in groups)
    dof = n - 3 * sum(len(g) > 0 for g in groups)
    if dof <= 0:
        return ln_opt, 0, 0
    pool = np.concatenate([g["_r"].to_numpy(dtype=float) for g in groups]) * np.sqrt(n / dof)
    for i, g in enumerate(groups):
        if g.empty:
            continue
        u = g["_u"].to_numpy(dtype=float)
        x = np.stack([np.ones_like(u), u, u**2], axis=1)
        y = g["_fit"].to_numpy(dtype=float)[:, None] + pool[rng.integers(0, n, (len(u), n_boot))]
        c = np.linalg.lstsq(x, y, rcond=None)[0]  # (3, n_boot): every replicate at once
        lo, hi = float(u.min()), float(u.max())
        with np.errstate(divide="ignore", invalid="ignore"):
            vertex = -c[1] / (2 * c[2])
        ends = np.where(c[1] * (hi - lo) + c[2] * (hi**2 - lo**2) < 0, hi, lo)
        inside = (c[2] > 0) & (vertex >= lo) & (vertex <= hi)
        ln_opt[i] += np.where(inside, vertex, ends)
    nu = sum(g["lr"].nunique() - 3 for g in groups if len(g))
    return ln_opt, n, max(nu, 1)


def _interval(x: np.ndarray, level: float) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if not x.size:
        return np.nan, np.nan
    lo, hi = np.percentile(x, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _replicate_answers(
    ln_widths: np.ndarray, ln_opt: np.ndarray, width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """beta_b, eta_keep_b and eta_extr_b per replicate (columns of ln_opt; rows are widths):
    the least-squares line of `fit_lr_law` in log-log, for every replicate at once."""
    dx = ln_widths - ln_widths.mean()
    mean = ln_opt.mean(axis=0)
    slope = dx @ ln_opt / (dx @ dx)
    return -slope, np.exp(mean), np.exp(mean + slope * (np.log(width) - ln_widths.mean()))


def _warnings(fit: dict, width: float, n_residuals: int, at_edge: list[int]) -> list[str]:
    notes = []
    if width > FAR_FACTOR * fit["width_max"]:
        notes.append(
            f"far extrapolation: width {width:g} is {width / fit['width_max']:.3g}x the largest "
            f"swept width {fit['width_max']:g} (more than {FAR_FACTOR:g}x)"
        )
    if fit["n_widths"] == 2:
        notes.append("two widths only: E cannot judge the law and no loss law is fitted")
    elif np.isfinite(fit["E"]) and fit["E"] > E_POOR:
        notes.append(f"poor fit: E = {fit['E']:.3g} > {E_POOR:g} (the optima stray from C N^-beta)")
    if fit["n_widths"] == 3 and np.isfinite(fit["L_inf"]):
        notes.append(
            "three widths: the loss law (3 parameters) fits them exactly, so the expected "
            "loss is an unchecked extrapolation"
        )
    if at_edge:
        notes.append(
            f"the LR grid does not bracket the optimum at width(s) {at_edge}: extend the grid"
        )
    if n_residuals == 0:
        notes.append("no residuals to resample (the fits use every point): interval from the data")
    return notes


def predict_lr(
    df: pd.DataFrame,
    width: float,
    by: Sequence[str] = DEFAULT_BY,
    loss: str = "final_eval_loss",
    n_boot: int = 200,
    level: float = LEVEL,
    seed: int = 0,
    expected_loss: bool = True,
) -> pd.DataFrame:
    """Recommended base LR at ``width`` per setting of an LR sweep (see the module docstring).

    Returns one row per setting: by..., label, rule ("keep", "extrapolate", or "" where the
    setting has optima at fewer than two widths), lr with its bootstrap interval lr_lo..lr_hi,
    keep_share, both candidates lr_keep and lr_extrapolate, beta with its interval, the
    drift per doubling (-beta), C, E, loss (expected L* at ``width``, NaN without a loss
    law), n_widths / width_min / width_max / n_at_edge (widths with an optimum), n_residuals
    (runs resampled) and warnings (a tuple of sentences: far extrapolation, poor fit, two
    widths only, a loss law that fits three widths exactly, unbracketed optima).

    ``expected_loss=False`` leaves loss NaN and skips the loss law's fit (the costly part when
    there are many settings, e.g. many independent draws).

    Raises ConfigError when no run converged, no setting has optima at two widths, or
    ``width`` lies below the smallest swept width.
    """
    by = list(by)
    if not 0 < level < 1:
        raise ConfigError(f"level must lie in (0, 1), got {level}")
    if n_boot < 10:
        raise ConfigError(f"n_boot must be at least 10, got {n_boot}")
    if not _usable(df, loss).any():
        raise ConfigError(f"no converged run: no run has status ok and a finite {loss}")
    optima = find_optima(df, by, loss, n_boot=0)
    optima = optima[np.isfinite(optima["lr_interp"].to_numpy(dtype=float))]
    if optima.groupby(by, dropna=False)["width"].nunique().max() < 2:
        found = sorted({int(w) for w in optima["width"]})
        raise ConfigError(f"optima at one width only ({found}): predict needs two or more")
    smallest = float(optima["width"].min())
    if width < smallest:
        raise ConfigError(
            f"target width {width:g} lies below the swept range (smallest width {smallest:g})"
        )
    runs = _window_runs(df, optima, by, loss)
    runs_of = dict(iter(runs.groupby(by, dropna=False, sort=True)))
    rng = np.random.default_rng(seed)
    records = []
    for key, mine in optima.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        mine = mine.sort_values("width")
        fit = _fit(mine, expected_loss)
        rec = {**dict(zip(by, key)), "label": label_of(key), **_answer(fit, mine, width)}
        n_resid = 0
        if fit["n_widths"] >= 2:
            own = runs_of.get(key if len(by) > 1 else key[0], runs.iloc[:0])
            ln_opt, n_resid, nu = _replicate_optima(own, mine, n_boot, rng)
            ln_widths = np.log(mine["width"].to_numpy(dtype=float))
            answers = _replicate_answers(ln_widths, ln_opt, width)
            rec.update(_bootstrap(rec, *answers, level, nu if n_resid else 0))
            rec["warnings"] = tuple(_warnings(fit, width, n_resid, fit["at_edge"]))
        else:
            rec["warnings"] = ("optima at one width only: no law to predict with",)
        rec["n_residuals"] = n_resid
        records.append(rec)
    return pd.DataFrame.from_records(records, columns=[*by, *COLUMNS])


def _fit(mine: pd.DataFrame, expected_loss: bool) -> dict[str, Any]:
    """The laws of one setting's optima (rows of `find_optima`, one per width): eta*(N) =
    C N^-beta by `fit_lr_law` and, from three widths, L*(N) = L_inf + A N^-alpha by
    `fit_loss_law` on the loss at the interpolated optimum (the loss at the predicted LR, not
    the grid minimum: [K]'s convention for E); ``expected_loss=False`` skips the latter."""
    n = mine["width"].to_numpy(dtype=float)
    c, beta, e = fit_lr_law(n, mine["lr_interp"].to_numpy(dtype=float))
    l_inf, a, alpha = (
        fit_loss_law(n, mine["loss_interp"].to_numpy(dtype=float))
        if expected_loss
        else (None, None, None)
    )
    at_edge = sorted(int(w) for w in mine.loc[mine["at_edge"].astype(bool), "width"])
    return {
        "n_widths": int(mine["width"].nunique()), "width_min": float(n.min()),
        "width_max": float(n.max()), "n_at_edge": len(at_edge), "at_edge": at_edge,
        "C": _nan(c), "beta": _nan(beta), "E": _nan(e),
        "drift_per_doubling": -_nan(beta), "L_inf": _nan(l_inf), "A": _nan(a),
        "alpha": _nan(alpha),
    }  # fmt: skip


def _nan(x: float | None) -> float:
    return np.nan if x is None else float(x)


def _answer(fit: dict, mine: pd.DataFrame, width: float) -> dict:
    """The point answer of one setting (the interval columns stay NaN until `_bootstrap`)."""
    out: dict[str, Any] = dict.fromkeys(COLUMNS[1:-1], np.nan)
    out.update(
        rule="", n_widths=fit["n_widths"], width_min=fit["width_min"],
        width_max=fit["width_max"], n_at_edge=fit["n_at_edge"], C=fit["C"], beta=fit["beta"],
        drift_per_doubling=fit["drift_per_doubling"], E=fit["E"],
    )  # fmt: skip
    if fit["n_widths"] < 2:
        return out
    out["lr_keep"] = float(np.exp(np.log(mine["lr_interp"].to_numpy(dtype=float)).mean()))
    out["lr_extrapolate"] = float(fit["C"] * width ** -fit["beta"])
    if np.isfinite(fit["L_inf"]):
        out["loss"] = float(fit["L_inf"] + fit["A"] * width ** -fit["alpha"])
    return out


def _bootstrap(
    rec: dict,
    beta_b: np.ndarray,
    keep_b: np.ndarray,
    extr_b: np.ndarray,
    level: float,
    nu: int,
) -> dict:
    """Rule, answer and intervals of one setting from its replicates (module docstring)."""
    beta = rec["beta"]
    lo, hi = _interval(beta_b, level)
    if not np.isfinite(lo):
        lo = hi = beta
    keep = lo - _TOL <= 0.0 <= hi + _TOL
    shift = beta_b - beta
    keep_b_rule = (lo + shift - _TOL <= 0.0) & (0.0 <= hi + shift + _TOL)
    answers = np.log(np.where(keep_b_rule, keep_b, extr_b))
    ln_lo, ln_hi = _interval(answers, level)
    mid = float(np.median(answers))
    q = (1 + level) / 2
    widen = float(stats.t.ppf(q, nu) / stats.norm.ppf(q)) if nu else 1.0
    lr = rec["lr_keep"] if keep else rec["lr_extrapolate"]
    return {  # the interval holds the answer itself (rounding: noiseless replicates equal it)
        "rule": "keep" if keep else "extrapolate",
        "lr": lr,
        "lr_lo": min(lr, float(np.exp(mid + widen * (ln_lo - mid)))),
        "lr_hi": max(lr, float(np.exp(mid + widen * (ln_hi - mid)))),
        "keep_share": float(np.mean(keep_b_rule)),
        "beta_lo": lo,
        "beta_hi": hi,
    }


def recommend(pred: pd.DataFrame) -> tuple[int | None, str]:
    """The row of `predict_lr`'s frame the data recommend, and why (one sentence).

    Lowest expected loss at the target; settings within TIE_PCT percent of it are tied, and the
    tie goes to the better transfer: keep before extrapolate, then smaller |beta|, then
    smaller E. Without any loss law (fewer than three widths), the better transfer decides
    alone. None when no setting has a prediction.
    """
    cand = pred[np.isfinite(pred["lr"].to_numpy(dtype=float))]
    if cand.empty:
        return None, "no setting has a prediction"
    quality = pd.DataFrame(
        {
            "extr": (cand["rule"] != "keep").astype(int),
            "beta": cand["beta"].abs(),
            "E": cand["E"].fillna(np.inf),
        },
        index=cand.index,
    )
    with_loss = cand[np.isfinite(cand["loss"].to_numpy(dtype=float))]
    if with_loss.empty:
        best = quality.sort_values(["extr", "beta", "E"]).index[0]
        return int(best), "no loss law (needs three widths): chosen for the better transfer"
    best_loss = float(with_loss["loss"].min())
    tied = with_loss[with_loss["loss"] <= best_loss * (1 + TIE_PCT / 100)]
    best = quality.loc[tied.index].sort_values(["extr", "beta", "E"]).index[0]
    others = with_loss.drop(index=best).sort_values("loss")
    versus = ", ".join(f"{r.loss:.4g} for {r.label}" for r in others.itertuples())
    loss = float(pred.loc[best, "loss"])
    if len(tied) > 1:
        why = (
            f"expected losses within {TIE_PCT:g}% ({loss:.4g} vs {versus}); chosen for the "
            f"better transfer ({pred.loc[best, 'rule']}, beta {pred.loc[best, 'beta']:.3g})"
        )
    else:
        why = f"lowest expected loss ({loss:.4g}" + (f" vs {versus})" if versus else ")")
    return int(best), why
