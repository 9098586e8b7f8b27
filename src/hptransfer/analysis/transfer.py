"""The transfer verdict: per setting, the optima per width, their drift, the transfer penalty.

One function, :func:`transfer_verdict`, turns a results table into what the report, the demo
and the reproductions print, so the three agree on every number:

- the optimum per (setting, width): `find_optima` with its default estimator;
- per setting, `fit_transfer`'s laws and metrics, among them the drift per doubling of width,
  -beta of eta*(N) = C N^-beta (log2 of the factor the optimum moves by when N doubles), and the
  transfer penalty: the loss at the largest width with the smallest width's optimum, in
  percent of the best loss there;
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

    def optima_of(self, key: Mapping[str, Any]) -> pd.DataFrame:
        """The optima of one setting at the widths that have one, sorted by width."""
        return _optima_of(self.optima, {c: key[c] for c in self.by})


def _optima_of(optima: pd.DataFrame, key: Mapping[str, Any]) -> pd.DataFrame:
    mine = setting_rows(optima, key)
    return mine[mine["lr_interp"].notna()].sort_values("width")


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
    return Transfer(by, optima, fits, verdicts)
