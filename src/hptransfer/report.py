"""A sweep directory -> one self-contained ``report.html`` plus a machine-readable ``summary.json``.

The page answers one question first: does the optimal learning rate transfer across width, and
if not, by how much does it move per doubling of width? A headline table gives, per setting,
the optimal LR at the smallest and largest width, the drift per doubling, the loss paid at the
largest width when the smallest width's optimum is reused, and a verdict. Figures (LR sweeps,
optimal LR against width with the fitted law, [K]'s metrics, per-layer diagnostics when the
runs logged them) and the detailed tables follow.

The HTML is written with the standard library only: inline CSS, figures embedded as base64
PNG, no scripts and no external resources, so the file can be mailed or archived as is. The
numbers come from `analysis.find_optima` and `analysis.fit_transfer`; see docs/results-format.md.

CLI: ``hptransfer report DIR [--out OUT] [--open] [--reference NAME]`` (see `add_parser`).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hptransfer.config import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

LOSS = "final_eval_loss"
"""The loss the report analyses (nats)."""

STATUSES = ("ok", "diverged", "failed", "running", "pending")
"""Run statuses counted in summary.json's ``counts``, which also has ``unreadable`` (run
directories whose config.json is missing or corrupt) and ``total``."""

MAX_DRIFT = 0.2
"""A setting transfers when |log2 of the optimum's move per doubling| is at most this (the
optimal LR moves by less than x0.87 .. x1.15 per doubling of width) ..."""

MAX_PENALTY_PCT = 1.0
"""... and reusing the smallest width's optimum costs at most this many percent of the best
loss at the largest width (when that penalty can be computed)."""

_STANDARD_KEYS = {"model.width", "optimizer.lr", "seed", "param.name", "optimizer.name"}
_DPI = 110


class ReportWarning(UserWarning):
    """The sweep is incomplete (unfinished or unreadable runs); the report is still written."""


# ---------------------------------------------------------------------------------------------
# Loading


def _load(sweep_dir: Path) -> tuple[pd.DataFrame, int, list[str]]:
    """Runs of the sweep, the number of unreadable run directories, and load_runs' complaints.

    Raises ConfigError when the directory is missing, holds no runs, or only unreadable ones.
    """
    from hptransfer.store import load_runs

    if not sweep_dir.is_dir():
        raise ConfigError(f"no such sweep directory: {sweep_dir}")
    runs = sweep_dir / "runs"
    dirs = {p.name for p in runs.iterdir() if p.is_dir()} if runs.is_dir() else set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = load_runs(sweep_dir, errors="warn")
    problems = []
    for w in caught:  # load_runs' list of unreadable runs goes into the report's own warning
        if str(w.message).startswith("skipped"):
            problems.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    unreadable = len(dirs - set(df["run_id"]))
    if df.empty and unreadable:
        raise ConfigError(
            f"no readable runs in {sweep_dir}: all {unreadable} run directories "
            "have a missing or corrupt config.json"
        )
    if df.empty:
        raise ConfigError(f"no runs in {sweep_dir} (expected {runs}/<run_id>/config.json)")
    for col in df.columns:  # lists and tables (e.g. a swept optimizer.betas) as hashable text
        if df[col].dtype == object and df[col].map(lambda v: isinstance(v, (list, dict))).any():
            df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    return df, unreadable, problems


def setting_columns(df: pd.DataFrame) -> list[str]:
    """The `by` columns: parameterization, optimizer, then every other swept key that varies
    within some (parameterization, optimizer, width) cell.

    A swept key that is a function of width (e.g. train.steps set from tokens per parameter) is
    not a setting: splitting on it would leave one width per setting.
    """
    from hptransfer.store import COLUMNS

    base = ["parameterization", "optimizer"]
    extra = [c for c in df.columns if c not in COLUMNS and c not in _STANDARD_KEYS]
    cell = df.groupby([*base, "width"], dropna=False)
    return base + [c for c in extra if (cell[c].nunique(dropna=False) > 1).any()]


def _counts(df: pd.DataFrame, unreadable: int) -> dict[str, int]:
    counts = {s: int((df["status"] == s).sum()) for s in STATUSES}
    return {**counts, "unreadable": unreadable, "total": len(df) + unreadable}


def _provenance(sweep_dir: Path, df: pd.DataFrame) -> dict[str, Any]:
    """Package version, creation time, the sweep spec and what the runs' env/summary files say."""
    from importlib import metadata

    try:
        version: str | None = metadata.version("hptransfer")
    except metadata.PackageNotFoundError:
        version = None
    spec = sweep_dir / "sweep.toml"
    found: dict[str, set[str]] = {
        k: set() for k in ("corpus_sha256", "torch_version", "git_revision", "device")
    }
    for run_id in df["run_id"]:
        run = sweep_dir / "runs" / str(run_id)
        record = _read_json(run / "env.json") or {}
        if not record.get("corpus_sha256"):  # train() alone writes no env.json
            record = {
                **record,
                "corpus_sha256": (_read_json(run / "summary.json") or {}).get("corpus_sha256"),
            }
        for key, values in found.items():
            if isinstance(record.get(key), str):
                values.add(record[key])
    return {
        "package_version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sweep_dir": str(sweep_dir.resolve()),
        "sweep_spec": spec.read_text() if spec.is_file() else None,
        "corpus_sha256": sorted(found["corpus_sha256"]),
        "torch_versions": sorted(found["torch_version"]),
        "git_revisions": sorted(found["git_revision"]),
        "devices": sorted(found["device"]),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------------------------------------
# Headline


def _verdict(fit: dict[str, Any], mine: pd.DataFrame) -> tuple[str, str]:
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


def _headline(optima: pd.DataFrame, fits: pd.DataFrame, by: list[str]) -> list[dict[str, Any]]:
    rows = []
    for fit in fits.to_dict("records"):
        mine = optima
        for col in by:
            mine = mine[(mine[col] == fit[col]) | (mine[col].isna() & _isna(fit[col]))]
        mine = mine[mine["lr_interp"].notna()].sort_values("width")
        verdict, note = _verdict(fit, mine)
        drift = fit["drift_per_doubling"]
        rows.append(
            {
                **{col: fit[col] for col in by},
                "width_min": int(mine["width"].iloc[0]) if len(mine) else None,
                "width_max": int(mine["width"].iloc[-1]) if len(mine) else None,
                "lr_at_width_min": float(mine["lr_interp"].iloc[0]) if len(mine) else None,
                "lr_at_width_max": float(mine["lr_interp"].iloc[-1]) if len(mine) else None,
                "drift_factor_per_doubling": 2.0**drift if _finite(drift) else None,
                "transfer_penalty_pct": fit["transfer_penalty_pct"],
                "verdict": verdict,
                "note": note,
            }
        )
    return rows


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _isna(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _label(row: dict[str, Any], by: Sequence[str]) -> str:
    return " / ".join(str(row[c]) for c in by if not _isna(row[c]))


# ---------------------------------------------------------------------------------------------
# Figures


_CAPTIONS = {
    "lr_sweep": (
        "Loss against learning rate",
        "One panel per setting, one line per width (darker = wider). Stars: interpolated "
        "optimum; crosses at the top: diverged runs.",
    ),
    "optimal_lr": (
        "Optimal learning rate against width",
        "Interpolated optima with the fitted law eta* = C N^-beta (dashed). A flat line means "
        "the LR transfers; hollow points are optima the LR grid did not bracket.",
    ),
    "metrics": (
        "Transfer metrics",
        "beta: exponent of the optimal-LR law; transfer penalty: loss paid at the largest width "
        "with the smallest width's optimum; E: fit quality of the LR law (ours, green band: "
        "E < 0.01); kappa: growth of the sensitivity to LR errors with width ([K]); R_inf: "
        "asymptotic loss gap to the reference.",
    ),
    "diagnostics": (
        "Diagnostics: {kind}",
        "Per-layer {kind} over training steps, for the run at the grid-optimal LR at the "
        "smallest and largest width (line style).",
    ),
}
"""(title, caption) of each figure."""


def _png(fig: Figure) -> str:
    """The figure as base64 PNG text; closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, facecolor="white")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(
    sweep_dir: Path, df: pd.DataFrame, optima: pd.DataFrame, fits: pd.DataFrame, by: list[str]
) -> list[tuple[str, str, str]]:
    """(title, caption, base64 PNG) of every figure the data supports."""
    import matplotlib.pyplot as plt
    import numpy as np

    from hptransfer.plots import plot_lr_sweep, plot_optimal_lr, plot_transfer_metrics

    out = [(*_CAPTIONS["lr_sweep"], _png(plot_lr_sweep(df, by, LOSS)))]
    if optima["lr_interp"].notna().any():
        fig, ax = plt.subplots(figsize=(5.8, 3.8), layout="constrained")
        plot_optimal_lr(optima, fits, ax=ax, by=by)
        lrs = optima["lr_interp"].to_numpy(dtype=float)
        lo, hi = np.nanmin(lrs), np.nanmax(lrs)
        if hi / lo < 4:  # equal optima: a span of 1e-16 would be drawn as if it were a factor
            mid = math.sqrt(lo * hi)
            ax.set_ylim(mid / 2, mid * 2)
        out.append((*_CAPTIONS["optimal_lr"], _png(fig)))
    if fits["beta"].notna().any():
        metrics = ("beta", "transfer_penalty_pct", "E", "kappa", "R_inf")
        fig = plot_transfer_metrics(fits, by=by, metrics=metrics)
        fig.set_size_inches(2.9 * len(metrics), 1.5 + 0.4 * max(len(fits), 2))
        out.append((*_CAPTIONS["metrics"], _png(fig)))
    out += _diagnostic_figures(sweep_dir, df, optima, by)
    return out


def _diagnostic_figures(
    sweep_dir: Path, df: pd.DataFrame, optima: pd.DataFrame, by: list[str]
) -> list[tuple[str, str, str]]:
    """Per-layer diagnostics (metrics.jsonl keys KIND/LAYER) of the runs at each setting's
    grid-optimal LR, at its smallest and largest width; one figure per KIND."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from hptransfer.plots import plot_diagnostics

    ok = df[df["status"] == "ok"]
    per_setting: list[tuple[str, pd.DataFrame]] = []
    for key, g in optima.groupby(by, dropna=False, sort=True):
        frames = []
        for _, opt in g[g["width"].isin([g["width"].min(), g["width"].max()])].iterrows():
            at_lr = np.isclose(ok["lr"], opt["lr_grid"], rtol=1e-9, atol=0)  # lr_grid: exp(ln)
            runs = ok[(ok["width"] == opt["width"]) & at_lr]
            for col in by:
                runs = runs[(runs[col] == opt[col]) | (runs[col].isna() & _isna(opt[col]))]
            if len(runs):
                metrics = _read_metrics(sweep_dir / "runs" / str(runs["run_id"].iloc[0]))
                if metrics is not None:
                    frames.append(metrics.assign(width=int(opt["width"])))
        if frames:
            label = _label(dict(zip(by, key if isinstance(key, tuple) else (key,))), by)
            per_setting.append((label, pd.concat(frames, ignore_index=True)))
    kinds = sorted({c.split("/")[0] for _, m in per_setting for c in m.columns if "/" in c})
    out = []
    for kind in kinds:
        panels = [
            (label, m) for label, m in per_setting if any(c.startswith(kind + "/") for c in m)
        ]
        # one legend entry per (layer, width): size the panels so that the legend fits
        entries = max(
            sum(c.startswith(kind + "/") for c in m) * m["width"].nunique() for _, m in panels
        )
        legend_cols = min(-(-entries // 16), 3)
        height = max(3.4, 0.9 + 0.17 * -(-entries // legend_cols))
        ncols = min(len(panels), 2 if legend_cols == 1 else 1)
        nrows = -(-len(panels) // ncols)
        fig, grid = plt.subplots(
            nrows,
            ncols,
            figsize=(6.2 * ncols + 2.2 * (legend_cols - 1), height * nrows),
            squeeze=False,
            layout="constrained",
        )
        for ax in grid.ravel()[len(panels) :]:
            ax.set_visible(False)
        for ax, (label, m) in zip(grid.ravel(), panels):
            cols = [c for c in m.columns if c.startswith(kind + "/")]
            plot_diagnostics(m.dropna(subset=cols, how="all"), kind + "/", ax=ax)
            ax.legend(
                fontsize="x-small", ncols=legend_cols, loc="upper left", bbox_to_anchor=(1.02, 1.0)
            )
            ax.set_title(f"{label}: {kind}")
        title, caption = _CAPTIONS["diagnostics"]
        out.append((title.format(kind=kind), caption.format(kind=kind), _png(fig)))
    return out


def _read_metrics(run: Path) -> pd.DataFrame | None:
    """The per-layer (KIND/LAYER) columns of a run's metrics.jsonl with step; None if none."""
    import pandas as pd

    rows = []
    try:
        with (run / "metrics.jsonl").open() as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:  # a run killed mid-write leaves a partial last line
                    continue
                layer = {k: v for k, v in record.items() if "/" in k}
                if layer and "step" in record:
                    rows.append({"step": record["step"], **layer})
    except OSError:
        return None
    return pd.DataFrame(rows) if rows else None


# ---------------------------------------------------------------------------------------------
# HTML


class _Html(str):
    """Text that is already HTML (not escaped again by `_cell`)."""


def _num(x: float, kind: str) -> str:
    """A number formatted for a table: lr, loss, pct, exp (exponents), or general."""
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
    if kind == "exp":  # exponents and E: fixed decimals, no -0.000
        return f"{round(x, 3) + 0.0:.3f}"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _cell(value: Any, kind: str = "") -> str:
    """One table cell's HTML: numbers formatted and right-aligned, text escaped."""
    if isinstance(value, _Html):
        return f"<td>{value}</td>"
    if isinstance(value, bool):
        return f'<td class="flag">{"yes" if value else ""}</td>'
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="na">&ndash;</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    if isinstance(value, float):
        return f'<td class="num">{html.escape(_num(value, kind))}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    kinds: Sequence[str] = (),
    table_id: str = "",
) -> str:
    kinds = list(kinds) + [""] * (len(headers) - len(kinds))
    attr = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(_cell(v, k) for v, k in zip(row, kinds)) + "</tr>" for row in rows
    )
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _frame_table(frame: pd.DataFrame, by: list[str], shown: dict[str, str]) -> str:
    """The `by` columns and the `shown` ones (column -> number format) of a DataFrame."""
    cols = by + [c for c in shown if c in frame.columns]
    rows = [[_plain(v) for v in row] for row in frame[cols].itertuples(index=False)]
    return _table(cols, rows, [shown.get(c, "") for c in cols])


_HEADLINE_HEADERS = (
    "setting",
    "widths",
    "optimal LR at smallest width",
    "optimal LR at largest width",
    "drift of the optimal LR",
    "transfer penalty at largest width",
    "verdict",
)


def _answer(h: dict[str, Any]) -> str:
    """One sentence (HTML) answering the headline question for one setting."""
    if h["verdict"] == "unclear":
        return f"is unclear: {html.escape(h['note'])}."
    pct, small, large = h["transfer_penalty_pct"], h["width_min"], h["width_max"]
    cost = ""
    if pct == math.inf:
        cost = f"; the LR tuned at width {small} diverges at width {large}"
    elif _finite(pct):
        cost = (
            f"; reusing the LR tuned at width {small} costs {_num(pct, 'pct')} of the best "
            f"loss at width {large}"
        )
    factor = h["drift_factor_per_doubling"]
    return f"{h['verdict']}: the optimal LR moves &times;{factor:.2f} per doubling of width{cost}."


def _headline_html(headline: list[dict[str, Any]], by: list[str]) -> str:
    rows, sentences = [], []
    for h in headline:
        label = _label(h, by)
        factor = h["drift_factor_per_doubling"]
        drift = _Html(f"&times;{factor:.2f} per doubling") if factor is not None else None
        badge = _Html(
            f'<span class="badge {h["verdict"]}">{html.escape(h["verdict"])}</span>'
            + (f'<div class="note">{html.escape(h["note"])}</div>' if h["note"] else "")
        )
        widths = None
        if h["width_min"] is not None:
            widths = _Html(f"{h['width_min']}&thinsp;&ndash;&thinsp;{h['width_max']}")
        lrs = [h["lr_at_width_min"], h["lr_at_width_max"]]
        rows.append([label, widths, *lrs, drift, h["transfer_penalty_pct"], badge])
        sentences.append(f"<li><b>{html.escape(label)}</b> {_answer(h)}</li>")
    kinds = ["", "", "lr", "lr", "", "pct", ""]
    table = _table(_HEADLINE_HEADERS, rows, kinds, table_id="headline-table")
    rule = (
        f"Verdict: <i>transfers</i> when the optimal LR moves by less than "
        f"&times;{2**-MAX_DRIFT:.2f}&ndash;&times;{2**MAX_DRIFT:.2f} per doubling of width and "
        f"reusing the smallest width's optimum costs at most {MAX_PENALTY_PCT:g} % of the best "
        "loss at the largest width; <i>drifts</i> otherwise; <i>unclear</i> with fewer than "
        "two widths or when the LR grid does not bracket the optimum at the smallest or "
        "largest width. Optima are interpolated (quadratic in ln LR); drift = "
        "2<sup>&minus;beta</sup> from the fit eta* = C N<sup>&minus;beta</sup>."
    )
    return f'{table}<ul class="answers">{"".join(sentences)}</ul><p class="rule">{rule}</p>'


_CSS = """
body{font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:#1d2330;background:#f6f7f9;margin:0}
main{max-width:1180px;margin:0 auto;padding:28px 32px 60px;background:#fff;min-height:100vh;
box-shadow:0 0 0 1px #e4e7ec}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 12px;padding-bottom:6px;
border-bottom:2px solid #e4e7ec}h3{font-size:16px;margin:26px 0 8px}
.sub{color:#5b6472;margin:0 0 18px}.notice{background:#fff6e0;border:1px solid #f0c36d;
border-radius:6px;padding:10px 14px;margin:14px 0}
table{border-collapse:collapse;margin:8px 0 14px;font-size:14px;width:auto}
th{background:#f1f3f6;text-align:left;font-weight:600;padding:7px 12px;
border-bottom:2px solid #d6dae1;vertical-align:bottom}
td{padding:6px 12px;border-bottom:1px solid #eceef2;vertical-align:top}
tbody tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.na,td.flag{color:#9aa1ad;text-align:center}
#headline-table{font-size:15px}#headline-table td{padding:9px 14px;white-space:nowrap}
#headline-table th{max-width:150px}
.badge{display:inline-block;padding:2px 10px;border-radius:11px;font-weight:600;font-size:13px}
.badge.transfers{background:#dff3e4;color:#17663a}.badge.drifts{background:#fde8d7;color:#9a4a0b}
.badge.unclear{background:#eceef2;color:#4b5361}
.note{color:#6b7280;font-size:12px;margin-top:3px;max-width:240px;white-space:normal}
ul.answers{margin:8px 0;padding-left:20px}.rule{color:#5b6472;font-size:13px;max-width:860px}
figure{margin:18px 0 26px}figure img{max-width:100%;height:auto;border:1px solid #eceef2}
figcaption{color:#5b6472;font-size:13px;max-width:860px;margin-top:4px}
pre{background:#f6f8fa;border:1px solid #e4e7ec;border-radius:6px;padding:12px;
overflow-x:auto;font-size:13px}
.scroll{overflow-x:auto}dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px}
dt{color:#5b6472}dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;
word-break:break-all}
"""


def _page(title: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(sections)}</main></body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# Entry point


_OPTIMA_SHOWN = {
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

_FITS_SHOWN = {
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


def build_report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    *,
    by: Sequence[str] | None = None,
    reference: str | None = None,
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.json`` for a sweep; return their paths.

    sweep_dir: a results directory (``runs/<run_id>/...``, see store.py). out: the directory to
    write into (default: sweep_dir). by: the setting columns (default: `setting_columns`).
    reference: the value of by[0] whose L_inf the others' R_inf is measured against (default:
    the lowest L_inf). Raises ConfigError when the directory is missing, has no readable runs,
    or names an unknown reference; warns (ReportWarning) when some runs are unfinished or
    unreadable, and still writes the report.
    """
    from hptransfer.analysis import find_optima, fit_transfer
    from hptransfer.store import write_json, write_text

    sweep_dir = Path(sweep_dir)
    df, unreadable, problems = _load(sweep_dir)
    by = list(by) if by is not None else setting_columns(df)
    counts = _counts(df, unreadable)
    unfinished = counts["running"] + counts["pending"]
    notice = ""
    if unfinished or unreadable:
        notice = (
            f"incomplete sweep: {unfinished} of {counts['total']} runs unfinished "
            f"(running or pending), {unreadable} unreadable"
        )
        warnings.warn(
            f"{notice}; the report covers the finished runs"
            + (f" ({problems[0][:300]})" if problems else ""),
            ReportWarning,
            stacklevel=2,
        )
    used = df[df["status"].isin(["ok", "diverged"]) & df["width"].notna() & df["lr"].notna()]
    used = used.astype({"width": int})
    optima = find_optima(used, by, LOSS, n_boot=200 if used["seed"].nunique() > 1 else 0)
    try:
        fits = fit_transfer(optima, used, by, reference=reference, loss=LOSS)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"--reference {reference}: {e}") from None
    headline = _headline(optima, fits, by)
    fits["verdict"] = [h["verdict"] for h in headline]
    provenance = _provenance(sweep_dir, df)

    out_dir = Path(out) if out is not None else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "optima": _records(optima.rename(columns={"loss_interp": "loss"})),
        "fits": _records(fits),
        "headline": [_plain_dict(h) for h in headline],
        "counts": counts,
        "provenance": provenance,
    }
    summary_path = out_dir / "summary.json"
    write_json(summary_path, summary)

    figures = _figures(sweep_dir, used, optima, fits, by) if len(used) else []
    name = html.escape(sweep_dir.resolve().name)
    sections = [
        f"<h1>LR transfer report: {name}</h1><p class='sub'>{counts['ok']} runs ok, "
        f"{counts['diverged']} diverged, {counts['failed']} failed of {counts['total']}; "
        f"created {html.escape(provenance['created'])}</p>",
        f"<p class='notice'><b>Note:</b> {html.escape(notice)}.</p>" if notice else "",
        "<h2>Does the learning rate transfer across width?</h2>",
        _headline_html(headline, by) if headline else "<p>No finished runs to analyse yet.</p>",
        "<h2>Figures</h2>" if figures else "",
        *(
            f'<figure><h3>{html.escape(t)}</h3><img src="data:image/png;base64,{png}" '
            f'alt="{html.escape(t)}"><figcaption>{html.escape(c)}</figcaption></figure>'
            for t, c, png in figures
        ),
        "<h2>Details</h2><h3>Optimal LR per width</h3>",
        f"<div class='scroll'>{_frame_table(optima, by, _OPTIMA_SHOWN)}</div>",
        "<h3>Scaling fits and transfer metrics</h3>",
        f"<div class='scroll'>{_frame_table(fits, by, _FITS_SHOWN)}</div>",
        "<h3>Runs by status</h3>",
        _table(list(counts), [list(counts.values())]),
        "<h3>Sweep spec (sweep.toml)</h3>",
        f"<pre>{html.escape(provenance['sweep_spec'] or '(no sweep.toml)')}</pre>",
        "<h3>Provenance</h3><dl>",
        *(
            f"<dt>{html.escape(k)}</dt><dd>{html.escape(_provenance_text(v))}</dd>"
            for k, v in provenance.items()
            if k != "sweep_spec"
        ),
        "</dl>",
    ]
    html_path = out_dir / "report.html"
    write_text(html_path, _page(f"LR transfer report: {sweep_dir.name}", sections))
    return html_path, summary_path


def _provenance_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none recorded)"
    return "(none recorded)" if value is None else str(value)


def _plain(value: Any) -> Any:
    """numpy / pandas scalars as Python values (NaN stays float NaN)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (str, bytes)) else value


def _plain_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in row.items()}


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [_plain_dict(r) for r in frame.to_dict("records")]


# ---------------------------------------------------------------------------------------------
# CLI adapter


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report DIR [--out OUT] [--open] [--reference NAME]``; imports nothing heavy."""
    p = subparsers.add_parser(
        "report",
        help="write report.html and summary.json for a sweep directory",
        description="Analyse a sweep directory and write a self-contained report.html (tables, "
        "figures, provenance) and summary.json.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="sweep results directory (holds runs/)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: DIR)")
    p.add_argument("--open", action="store_true", help="open the report in a web browser")
    p.add_argument(
        "--reference",
        default=None,
        metavar="NAME",
        help="parameterization R_inf is measured against (default: lowest L_inf)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the report; bad input prints one line on stderr and returns 2."""
    import matplotlib

    matplotlib.use("Agg")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReportWarning)
            html_path, summary_path = build_report(args.dir, args.out, reference=args.reference)
    except ConfigError as e:
        print(f"hptransfer report: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for w in caught:
        if issubclass(w.category, ReportWarning):
            print(
                f"hptransfer report: warning: {' '.join(str(w.message).split())}", file=sys.stderr
            )
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    print(f"wrote {html_path}\nwrote {summary_path}")
    if args.open:
        import webbrowser

        try:
            webbrowser.open(html_path.resolve().as_uri())
        except webbrowser.Error:
            pass
    return 0
