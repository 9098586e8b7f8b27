"""The base LR to use at a target width, with an interval, and the setting the data recommend.

For each setting (the `by` columns: parameterization, optimizer, ...) the per-width optima of
`find_optima` and the law eta*(N) = C N^-beta of `fit_transfer` give two candidate answers at
the target width N_t:

- keep:        eta_keep = exp(mean over swept widths of ln eta*(N))   (the law with beta = 0)
- extrapolate: eta_extr = C N_t^-beta

Uncertainty comes from a residual bootstrap over the runs the per-width fits used. At each
width, every usable run (each seed at each LR) inside the window of the quadratic
L = L* + a (ln eta - ln eta*)^2 has a residual r = L - fit; the residuals of a setting are
pooled over its widths and scaled by sqrt(n / (n - 3 k)) (n residuals, k fitted quadratics,
3 parameters each) to undo the shrinkage of least squares. A replicate redraws the loss of
every such run as fit + a residual drawn with replacement, leaves the other runs (diverged,
outside the window, widths whose optimum is not bracketed) as measured, and reruns
`find_optima` and `fit_lr_law`: replicate b gives beta_b, eta_keep_b and eta_extr_b.

The rule (explicit, and the same in every replicate):
- the level-`level` bootstrap interval [beta_lo, beta_hi] of beta contains 0 -> keep (the data
  cannot tell the optimum from one that does not move with width); otherwise -> extrapolate.
- Replicate b decides with its own interval, taken as the full-data interval shifted by
  beta_b - beta: keep_b iff beta_lo + (beta_b - beta) <= 0 <= beta_hi + (beta_b - beta).
  Its answer is eta_keep_b or eta_extr_b accordingly, so the interval [lr_lo, lr_hi] (the
  percentiles of these answers) covers the noise in the optima AND the choice between the
  two rules; keep_share is the fraction of replicates that kept.

The expected loss at N_t is the loss law L*(N) = L_inf + A N^-alpha of `fit_transfer` (needs
three widths), a point estimate. `recommend` picks the setting with the lowest expected loss;
settings within TIE_PCT percent of it are tied, and ties go to the better transfer (keep
before extrapolate, then the smaller |beta|, then the smaller E).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hptransfer.analysis.optimum import DEFAULT_BY, find_optima
from hptransfer.analysis.scaling import fit_lr_law, fit_transfer
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


def _resampled(
    df: pd.DataFrame, optima: pd.DataFrame, by: list[str], loss: str, n_boot: int, seed: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The runs of every setting, n_boot times, with the losses inside the fits redrawn.

    Returns the stacked frame (a column _boot numbers the replicate) and the number of
    residuals per setting label (0 where the fits leave none: those replicates equal the data).
    """
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
    fitted = (
        rows["loss_interp"].to_numpy()
        + rows["curvature"].to_numpy() * np.log(lr / rows["lr_interp"].to_numpy()) ** 2
    )
    resid = rows["_y"].to_numpy() - fitted
    rng = np.random.default_rng(seed)
    y_boot = np.tile(rows["_y"].to_numpy(), (n_boot, 1))  # (n_boot, runs)
    counts = {}
    for key, idx in rows.groupby(by, dropna=False, sort=True).indices.items():
        key = label_of(key if isinstance(key, tuple) else (key,))
        mine = idx[inside[idx]]
        n_fits = rows.iloc[mine][keys].drop_duplicates().shape[0]
        dof = mine.size - 3 * n_fits
        counts[key] = int(mine.size) if dof > 0 else 0
        if dof <= 0:
            continue
        pool = resid[mine] * np.sqrt(mine.size / dof)
        draw = rng.integers(0, pool.size, size=(n_boot, mine.size))
        y_boot[:, mine] = fitted[mine][None, :] + pool[draw]
    base = rows[[*keys, "lr", "seed", "status"]] if "seed" in rows else rows[[*keys, "lr"]]
    stacked = pd.concat([base] * n_boot, ignore_index=True)
    stacked["status"] = np.tile(rows["status"].to_numpy(), n_boot)
    stacked[loss] = y_boot.reshape(-1)
    stacked["_boot"] = np.repeat(np.arange(n_boot), len(rows))
    return stacked, counts


def _interval(x: np.ndarray, level: float) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if not x.size:
        return np.nan, np.nan
    lo, hi = np.percentile(x, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _replicate_answers(
    boot: pd.DataFrame, width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """beta_b, eta_keep_b and eta_extr_b of each replicate of one setting."""
    out = []
    for _, g in boot.groupby("_boot", sort=True):
        ln_lr = np.log(g["lr_interp"].to_numpy(dtype=float))
        c, beta, _ = fit_lr_law(g["width"].to_numpy(dtype=float), np.exp(ln_lr))
        fin = np.isfinite(ln_lr)
        keep = float(np.exp(ln_lr[fin].mean())) if fin.any() else np.nan
        extr = np.nan if c is None or beta is None else c * width ** -float(beta)
        out.append((np.nan if beta is None else beta, keep, extr))
    arr = np.array(out, dtype=float).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


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
) -> pd.DataFrame:
    """Recommended base LR at ``width`` per setting of an LR sweep (see the module docstring).

    Returns one row per setting: by..., label, rule ("keep", "extrapolate", or "" where the
    setting has optima at fewer than two widths), lr with its bootstrap interval lr_lo..lr_hi,
    keep_share, both candidates lr_keep and lr_extrapolate, beta with its interval, the
    drift per doubling (-beta), C, E, loss (expected L* at ``width``, NaN without a loss
    law), n_widths / width_min / width_max / n_at_edge (widths with an optimum), n_residuals
    (runs resampled) and warnings (a tuple of sentences: far extrapolation, poor fit, two
    widths only, a loss law that fits three widths exactly, unbracketed optima).

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
    # the expected loss is the loss at the predicted LR: the law is fitted on the interpolated
    # optimum's loss, not on the grid minimum ([K]'s convention for E, kappa and R(inf))
    fits = fit_transfer(optima, df, by, loss=loss, optimum_loss="interpolated")
    boot_runs, n_resid = _resampled(df, optima, by, loss, n_boot, seed)
    boot = find_optima(boot_runs, [*by, "_boot"], loss, n_boot=0)
    boot_groups = {
        label_of(k if isinstance(k, tuple) else (k,)): g
        for k, g in boot.groupby(by, dropna=False, sort=True)
    }
    records = []
    for fit in fits.to_dict("records"):
        key = tuple(fit[c] for c in by)
        mine = optima
        for col, val in zip(by, key):
            mine = mine[(mine[col] == val) | (mine[col].isna() & pd.isna(val))]
        at_edge = sorted(int(w) for w in mine.loc[mine["at_edge"], "width"])
        fit = {**fit, "n_widths": int(mine["width"].nunique()), "n_at_edge": len(at_edge)}
        rec = {**dict(zip(by, key)), "label": label_of(key), **_answer(fit, mine, width, level)}
        if fit["n_widths"] >= 2:
            g = boot_groups[rec["label"]]
            rec.update(_bootstrap(rec, *_replicate_answers(g, width), level))
        rec["n_residuals"] = n_resid.get(rec["label"], 0)
        rec["warnings"] = tuple(_warnings(fit, width, rec["n_residuals"], at_edge))
        if fit["n_widths"] < 2:
            rec["warnings"] = ("optima at one width only: no law to predict with",)
        records.append(rec)
    return pd.DataFrame.from_records(records, columns=[*by, *COLUMNS])


def _answer(fit: dict, mine: pd.DataFrame, width: float, level: float) -> dict:
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
    rec: dict, beta_b: np.ndarray, keep_b: np.ndarray, extr_b: np.ndarray, level: float
) -> dict:
    """Rule, answer and intervals of one setting from its replicates (module docstring)."""
    beta = rec["beta"]
    lo, hi = _interval(beta_b, level)
    if not np.isfinite(lo):
        lo = hi = beta
    keep = lo - _TOL <= 0.0 <= hi + _TOL
    shift = beta_b - beta
    keep_b_rule = (lo + shift - _TOL <= 0.0) & (0.0 <= hi + shift + _TOL)
    answers = np.where(keep_b_rule, keep_b, extr_b)
    lr_lo, lr_hi = _interval(answers, level)
    return {
        "rule": "keep" if keep else "extrapolate",
        "lr": rec["lr_keep"] if keep else rec["lr_extrapolate"],
        "lr_lo": lr_lo,
        "lr_hi": lr_hi,
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
