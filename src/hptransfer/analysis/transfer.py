"""The transfer verdict: per setting, the optima per width, their drift, the transfer penalty.

One function, :func:`transfer_verdict`, turns a results table into what the report, the demo
and the reproductions print, so the three agree on every number:

- the optimum per (setting, width): `find_optima` with its default estimator;
- per setting, `fit_transfer`'s laws and metrics, among them the drift per doubling of width,
  -beta of eta*(N) = C N^-beta (log2 of the factor the optimum moves by when N doubles), and the
  transfer penalty: the loss at the largest width with the smallest width's optimum, in
  percent of the best loss there;
- with several seeds, the same optima and fits for each seed alone (:attr:`Transfer.per_seed`,
  :attr:`Transfer.seed_optima`) and, in ``fits``, each SEED_METRICS column's interval over
  seeds, ``<metric>_lo`` / ``<metric>_hi`` (min and max of the per-seed values; the point
  value stays the fit on the seed-mean curves), and :meth:`Transfer.loss_gap`, the loss
  difference of two settings at one width with the same interval, paired by seed;
- the verdict: *transfers* when |drift| <= MAX_DRIFT and the penalty is at most
  MAX_PENALTY_PCT (or cannot be computed); *drifts* otherwise; *unclear* with optima at fewer
  than two widths or when the smallest or largest width's optimum is not bracketed by the grid.

A setting's optima per width are its rows of ``optima`` with a finite interpolated optimum (a
width where every run diverged has none), sorted by width: :meth:`Transfer.optima_of`. Rows are
matched to a setting by :func:`setting_rows`, where NaN matches NaN (a key some runs of a
sweep leave unset).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hptransfer.analysis.optimum import find_optima
from hptransfer.analysis.scaling import fit_transfer

LOSS = "final_eval_loss"
"""The loss the verdict is about (nats)."""

MAX_DRIFT = 0.2
"""A setting transfers when |log2 of the optimum's move per doubling| is at most this (the
optimal LR moves by less than x0.87 .. x1.15 per doubling of width) ..."""

MAX_PENALTY_PCT = 1.0
"""... and reusing the smallest width's optimum costs at most this many percent of the best
loss at the largest width (when that penalty can be computed)."""

N_BOOT = 200
"""Bootstrap resamples over seeds for the optimum's interval, when a sweep has several seeds."""

SEED_METRICS = ("drift_per_doubling", "transfer_penalty_pct", "extrap_penalty_pct", "E",
                "kappa", "R_inf")  # fmt: skip
"""Fit columns that get a seed interval (``_lo``, ``_hi``) when a sweep has several seeds."""

VERDICT_COLUMNS = (
    "width_min",
    "width_max",
    "lr_at_width_min",
    "lr_at_width_max",
    "drift_factor_per_doubling",
    "transfer_penalty_pct",
    "verdict",
    "note",
)
"""Columns of :attr:`Transfer.verdicts` after the setting columns."""


def is_missing(value: Any) -> bool:
    """None or a float NaN: a setting key left unset."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def setting_rows(frame: pd.DataFrame, key: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of ``frame`` whose columns equal ``key``'s values, NaN matching NaN."""
    mask = np.ones(len(frame), dtype=bool)
    for col, value in key.items():
        column = frame[col]
        if is_missing(value):
            mask &= column.isna().to_numpy()
        else:
            mask &= (column == value).to_numpy()
    return frame[mask]


def setting_label(values: Sequence[Any]) -> str:
    """A setting's name in tables and legends: its by-values joined with ' / ', unset skipped."""
    return " / ".join(str(v) for v in values if not is_missing(v))


def plain(value: Any) -> Any:
    """A numpy / pandas scalar as a Python value (NaN stays float NaN)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (str, bytes)) else value


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of a result frame as dicts of Python values (for JSON and templates)."""
    return [{str(k): plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def finished_runs(df: pd.DataFrame, x: str = "width") -> pd.DataFrame:
    """The runs that say something about the LR: status ok or diverged, with an LR and an x.

    ``x`` is the scaled dimension (a column of ``df``: width, or e.g. model.depth); it is copied
    into the width column, as an int, which the optimum and scaling fits read.
    """
    runs = df[df["status"].isin(["ok", "diverged"]) & df[x].notna() & df["lr"].notna()].copy()
    runs["width"] = runs[x]
    return runs.astype({"width": int})


@dataclass(frozen=True)
class Transfer:
    """The optima, the fits and the verdict of every setting of a results table."""

    by: tuple[str, ...]
    optima: pd.DataFrame
    """find_optima: one row per (setting, width), also where no run converged."""
    fits: pd.DataFrame
    """fit_transfer: one row per setting, plus its ``verdict``."""
    verdicts: pd.DataFrame
    """One row per setting (in the order of ``fits``): by..., then VERDICT_COLUMNS."""
    per_seed: pd.DataFrame | None = None
    """fit_transfer of each seed's runs alone: by..., seed, the fit columns (None: one seed)."""
    seed_optima: pd.DataFrame | None = None
    """find_optima of each seed's runs alone, with a seed column (None: one seed)."""

    def optima_of(self, key: Mapping[str, Any]) -> pd.DataFrame:
        """The optima of one setting at the widths that have one, sorted by width."""
        return _optima_of(self.optima, {c: key[c] for c in self.by})

    def loss_gap(
        self, a: Mapping[str, Any], b: Mapping[str, Any], width: int
    ) -> tuple[float, float, float]:
        """Loss at the optimum of setting ``a`` minus that of ``b`` at ``width`` (nats): the
        seed-mean curves' difference, and the min and max over seeds of the per-seed
        differences (paired by seed; NaN without several seeds or without an optimum)."""

        keys = [{c: key[c] for c in self.by} for key in (a, b)]
        mean = _losses(self.optima, keys[0], width) - _losses(self.optima, keys[1], width)
        point = float(mean.iloc[0]) if len(mean) else math.nan
        if self.seed_optima is None:
            return point, math.nan, math.nan
        diff = _losses(self.seed_optima, keys[0], width) - _losses(self.seed_optima, keys[1], width)
        diff = diff.dropna()
        if diff.empty:
            return point, math.nan, math.nan
        return point, float(diff.min()), float(diff.max())


def _optima_of(optima: pd.DataFrame, key: Mapping[str, Any]) -> pd.DataFrame:
    mine = setting_rows(optima, key)
    return mine[mine["lr_interp"].notna()].sort_values("width")


def _losses(optima: pd.DataFrame, key: Mapping[str, Any], width: int) -> pd.Series:
    """Loss at the optimum of one setting at ``width``, indexed by seed (0 without a seed
    column)."""
    mine = _optima_of(optima, key)
    mine = mine[mine["width"] == width]
    seeds = mine["seed"].to_numpy() if "seed" in mine.columns else np.zeros(len(mine), int)
    return pd.Series(mine["loss_interp"].to_numpy(dtype=float), index=seeds)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _verdict(fit: Mapping[str, Any], mine: pd.DataFrame) -> tuple[str, str]:
    """(verdict, note) of one setting from its fit_transfer row and its optima by width."""
    drift, pct = fit["drift_per_doubling"], fit["transfer_penalty_pct"]
    if mine.empty:
        return "unclear", "no run converged"
    notes = []
    if fit["n_at_edge"]:
        notes.append(f"the LR grid does not bracket the optimum at {fit['n_at_edge']} width(s)")
    if pct == math.inf:
        notes.append("the transferred LR diverges at the largest width")
    note = "; ".join(notes)
    if fit["n_widths"] < 2 or not _finite(drift):
        return "unclear", note or "needs optima at two or more widths"
    if mine["at_edge"].iloc[0] or mine["at_edge"].iloc[-1]:
        return "unclear", note + "; extend the grid at the smallest and largest width"
    small_penalty = not _finite(pct) or pct <= MAX_PENALTY_PCT
    return ("transfers" if abs(drift) <= MAX_DRIFT and small_penalty else "drifts"), note


def transfer_verdict(
    runs: pd.DataFrame,
    by: Sequence[str],
    *,
    loss: str = LOSS,
    reference: str | Mapping[str, object] | None = None,
) -> Transfer:
    """Optima per width, fits and verdict of each setting (``by`` values) of ``runs``.

    ``runs``: finished runs with an int width column (see :func:`finished_runs`). reference:
    the setting R_inf is measured against (fit_transfer's argument: KeyError or ValueError
    when it names no setting). With several seeds, the optima get a bootstrap interval.
    """
    by = tuple(by)
    several_seeds = "seed" in runs.columns and runs["seed"].nunique() > 1
    optima = find_optima(runs, list(by), loss, n_boot=N_BOOT if several_seeds else 0)
    fits = fit_transfer(optima, runs, list(by), reference=reference, loss=loss)
    per_seed = seed_optima = None
    if several_seeds:
        per_seed, seed_optima = _per_seed(runs, by, loss, reference)
        for metric in SEED_METRICS:
            spread = [_seed_values(per_seed, by, fit, metric) for fit in fits.to_dict("records")]
            fits[f"{metric}_lo"] = [min(v) if v else math.nan for v in spread]
            fits[f"{metric}_hi"] = [max(v) if v else math.nan for v in spread]
    rows = []
    for fit in fits.to_dict("records"):
        mine = _optima_of(optima, {c: fit[c] for c in by})
        verdict, note = _verdict(fit, mine)
        drift = fit["drift_per_doubling"]
        found = len(mine) > 0
        rows.append(
            {
                **{c: fit[c] for c in by},
                "width_min": int(mine["width"].iloc[0]) if found else None,
                "width_max": int(mine["width"].iloc[-1]) if found else None,
                "lr_at_width_min": float(mine["lr_interp"].iloc[0]) if found else None,
                "lr_at_width_max": float(mine["lr_interp"].iloc[-1]) if found else None,
                "drift_factor_per_doubling": 2.0**drift if _finite(drift) else None,
                "transfer_penalty_pct": fit["transfer_penalty_pct"],
                "verdict": verdict,
                "note": note,
            }
        )
    verdicts = pd.DataFrame(rows, columns=[*by, *VERDICT_COLUMNS], dtype=object)
    fits = fits.assign(verdict=verdicts["verdict"].to_numpy())
    return Transfer(by, optima, fits, verdicts, per_seed, seed_optima)


def _per_seed(
    runs: pd.DataFrame, by: tuple[str, ...], loss: str,
    reference: str | Mapping[str, object] | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """find_optima and fit_transfer of each seed's runs alone, each with a seed column."""
    fits, optima = [], []
    for seed, mine in runs.groupby("seed", sort=True):
        opt = find_optima(mine, list(by), loss, n_boot=0)
        fits.append(fit_transfer(opt, mine, list(by), reference=reference, loss=loss)
                    .assign(seed=seed))  # fmt: skip
        optima.append(opt.assign(seed=seed))
    return pd.concat(fits, ignore_index=True), pd.concat(optima, ignore_index=True)


def _seed_values(
    per_seed: pd.DataFrame, by: tuple[str, ...], fit: Mapping[str, Any], metric: str
) -> list[float]:
    """The finite values of ``metric`` over the seeds of the setting of ``fit``."""
    values = setting_rows(per_seed, {c: fit[c] for c in by})[metric].to_numpy(dtype=float)
    return [float(v) for v in values if math.isfinite(v)]
