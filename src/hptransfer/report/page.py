"""report.html from the report's numbers: cell formats, and the Jinja2 template that lays out
the page (``templates/report.html.j2`` with its stylesheet ``templates/report.css``).

Numbers are formatted here, per kind of quantity (learning rates, losses, percentages,
exponents); the template only places them. Autoescaping is on: every text from the sweep
(setting names, the spec, provenance) is escaped by Jinja2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from hptransfer.analysis.transfer import MAX_DRIFT, MAX_PENALTY_PCT, plain, setting_label

if TYPE_CHECKING:
    import pandas as pd


class Figure(NamedTuple):
    """A figure of the page: heading, caption, and the image as base64 PNG text."""

    title: str
    caption: str
    png: str


class Cell(NamedTuple):
    """One table cell: its text and CSS class (num, na, flag or none)."""

    text: str
    css: str = ""


OPTIMA_SHOWN = {
    "width": "",
    "lr_grid": "lr",
    "lr_interp": "lr",
    "lr_interp_lo": "lr",
    "lr_interp_hi": "lr",
    "loss_interp": "loss",
    "curvature": "",
    "n_points": "",
    "n_lrs": "",
    "n_diverged": "",
    "n_seeds": "",
    "at_edge": "",
}
"""Columns of the optima table on the page (all of them are in summary.json), and formats."""

FITS_SHOWN = {
    "n_widths": "",
    "n_at_edge": "",
    "C": "lr",
    "beta": "exp",
    "E": "exp",
    "L_inf": "loss",
    "alpha": "exp",
    "gamma": "exp",
    "kappa": "exp",
    "R_inf": "loss",
    "transfer_penalty": "loss",
    "transfer_penalty_pct": "pct",
    "extrap_penalty": "loss",
    "extrap_penalty_pct": "pct",
}
"""Columns of the fits table on the page, and formats."""


def number(x: float, kind: str) -> str:
    """A number formatted for a table: lr, loss, pct, pct_share (a fraction as a whole
    percentage), exp (exponents), or general."""
    if kind == "pct" and x == math.inf:
        return "diverged"
    if not math.isfinite(x):
        return "n/a"
    if kind == "lr":
        return f"{x:.3g}" if 0.1 <= abs(x) < 1e3 else f"{x:.2e}".replace("e-0", "e-")
    if kind == "loss":
        return f"{x:.4f}"
    if kind == "pct":
        return f"{x:.2f} %"
    if kind == "pct_share":  # a fraction in [0, 1] as a whole percentage
        return f"{x:.0%}"
    if kind == "exp":  # exponents and E: fixed decimals, no -0.000
        return f"{round(x, 3) + 0.0:.3f}"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def cell(value: Any, kind: str = "") -> Cell:
    """A value as a table cell: numbers formatted and right-aligned, flags, missing values."""
    value = plain(value)
    if isinstance(value, bool):
        return Cell("yes" if value else "", "flag")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Cell("", "na")
    if isinstance(value, int):
        return Cell(str(value), "num")
    if isinstance(value, float):
        return Cell(number(value, kind), "num")
    return Cell(str(value))


def _table(frame: pd.DataFrame, by: Sequence[str], shown: dict[str, str]) -> dict[str, Any]:
    """The `by` columns and the `shown` ones (column -> number format) of a frame."""
    cols = [*by, *(c for c in shown if c in frame.columns)]
    kinds = [shown.get(c, "") for c in cols]
    rows = [[cell(v, k) for v, k in zip(row, kinds)] for row in frame[cols].itertuples(index=False)]
    return {"headers": cols, "rows": rows}


def _headline_row(h: dict[str, Any], by: Sequence[str]) -> dict[str, Any]:
    """A headline record (analysis.transfer's verdicts) with its cells and its sentence's
    penalty text."""
    pct = h["transfer_penalty_pct"]
    return {
        **h,
        "label": setting_label([h[c] for c in by]),
        "lr_min": cell(h["lr_at_width_min"], "lr"),
        "lr_max": cell(h["lr_at_width_max"], "lr"),
        "penalty": cell(pct, "pct"),
        "diverges": pct == math.inf,
        "penalty_text": number(pct, "pct") if isinstance(pct, float) and math.isfinite(pct) else "",
    }


def _answer(target: dict[str, Any]) -> dict[str, Any]:
    """The "what to use at width N" section: one row of cells per setting, its warnings, and
    the recommendation (report.answer's data)."""
    if "unavailable" in target:
        return {**target, "rows": [], "warnings": []}
    rows, notes = [], []
    for s in target["settings"]:
        lo, hi = number(s["lr_lo"], "lr"), number(s["lr_hi"], "lr")
        predicted = math.isfinite(s["lr"])
        rows.append(
            [
                Cell(s["label"]),
                Cell(s["rule"] or "no prediction"),
                cell(s["lr"], "lr"),
                Cell(f"{lo} .. {hi}", "num") if predicted else Cell("", "na"),
                cell(s["keep_share"], "pct_share") if predicted else Cell("", "na"),
                cell(s["drift_per_doubling"], "exp"),
                cell(s["E"], "exp") if s["n_widths"] > 2 else Cell("", "na"),
                cell(s["loss"], "loss"),
            ]
        )
        notes += [f"{s['label']}: {w}" for w in s["warnings"]]
    return {**target, "rows": rows, "warnings": notes, "pct": f"{target['level']:.0%}"}


def _provenance_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none recorded)"
    return "(none recorded)" if value is None else str(value)


def render(
    *,
    name: str,
    title: str,
    counts: dict[str, int],
    notice: str,
    headline: list[dict[str, Any]],
    by: Sequence[str],
    figures: list[Figure],
    optima: pd.DataFrame,
    fits: pd.DataFrame,
    answer: dict[str, Any],
    provenance: dict[str, Any],
) -> str:
    """The report page as HTML text."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hptransfer.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2").render(
        name=name,
        title=title,
        counts=counts,
        created=provenance["created"],
        notice=notice,
        headline=[_headline_row(h, by) for h in headline],
        max_drift=MAX_DRIFT,
        max_penalty_pct=MAX_PENALTY_PCT,
        figures=figures,
        optima=_table(optima, by, OPTIMA_SHOWN),
        fits=_table(fits, by, FITS_SHOWN),
        answer=_answer(answer),
        counts_table={"headers": list(counts), "rows": [[cell(v) for v in counts.values()]]},
        sweep_spec=provenance["sweep_spec"] or "(no sweep.toml)",
        provenance=[(k, _provenance_text(v)) for k, v in provenance.items() if k != "sweep_spec"],
    )
