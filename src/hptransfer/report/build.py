"""A sweep directory -> one self-contained ``report.html`` plus a machine-readable ``summary.json``.

The page answers one question first: does the optimal learning rate transfer across width, and
if not, by how much does it move per doubling of width? A headline table gives, per setting,
the optimal LR at the smallest and largest width, the drift per doubling, the loss paid at the
largest width when the smallest width's optimum is reused, and a verdict (all of it from
`analysis.transfer.transfer_verdict`). Figures (LR sweeps, optimal LR against width with the
fitted law, [K]'s metrics, per-layer diagnostics when the runs logged them) and the detailed
tables follow. After the figures comes the answer a user came for: the base LR to use at a larger
width, per setting, with its interval, and the setting the data recommend (`report.answer`, the
numbers of ``hptransfer predict``).

This module loads the runs, computes the numbers and draws the figures; `report.page` renders
them through the Jinja2 template ``templates/report.html.j2``: inline CSS, figures embedded as
base64 PNG, no scripts and no external resources, so the file can be mailed or archived as is.
See docs/results-format.md.
"""

from __future__ import annotations

import base64
import io
import json
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hptransfer.analysis.transfer import LOSS, Transfer, setting_label, setting_rows
from hptransfer.errors import ConfigError
from hptransfer.report.answer import answer
from hptransfer.report.page import Figure, render

if TYPE_CHECKING:
    import matplotlib.figure
    import pandas as pd

STATUSES = ("ok", "diverged", "stopped", "failed", "running", "pending")
"""Run statuses counted in summary.json's ``counts``, which also has ``unreadable`` (run
directories whose config.json is missing or corrupt) and ``total``."""

_STANDARD_KEYS = {"model.width", "optimizer.lr", "seed", "param.name", "optimizer.name"}
_DPI = 110


class ReportWarning(UserWarning):
    """The sweep is incomplete (unfinished or unreadable runs); the report is still written."""


# ---------------------------------------------------------------------------------------------
# Loading


def load_sweep(sweep_dir: Path) -> tuple[pd.DataFrame, int, list[str]]:
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


def _png(fig: matplotlib.figure.Figure) -> str:
    """The figure as base64 PNG text; closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, facecolor="white")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(sweep_dir: Path, runs: pd.DataFrame, transfer: Transfer) -> list[Figure]:
    """Every figure the data supports: (title, caption, base64 PNG)."""
    import matplotlib.pyplot as plt

    from hptransfer.plots import plot_lr_sweep, plot_optimal_lr, plot_transfer_metrics

    by, optima, fits = list(transfer.by), transfer.optima, transfer.fits
    out = [Figure(*_CAPTIONS["lr_sweep"], _png(plot_lr_sweep(runs, by, LOSS)))]
    if optima["lr_interp"].notna().any():
        fig, ax = plt.subplots(figsize=(5.8, 3.8), layout="constrained")
        plot_optimal_lr(optima, fits, ax=ax, by=by)
        out.append(Figure(*_CAPTIONS["optimal_lr"], _png(fig)))
    if fits["beta"].notna().any():
        metrics = ("beta", "transfer_penalty_pct", "E", "kappa", "R_inf")
        fig = plot_transfer_metrics(fits, by=by, metrics=metrics)
        fig.set_size_inches(2.9 * len(metrics), 1.5 + 0.4 * max(len(fits), 2))
        out.append(Figure(*_CAPTIONS["metrics"], _png(fig)))
    return out + _diagnostic_figures(sweep_dir, runs, transfer)


def _diagnostic_figures(sweep_dir: Path, runs: pd.DataFrame, transfer: Transfer) -> list[Figure]:
    """Per-layer diagnostics (metrics.jsonl keys KIND/LAYER) of the runs at each setting's
    grid-optimal LR, at its smallest and largest width; one figure per KIND."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from hptransfer.plots import plot_diagnostics

    by = list(transfer.by)
    ok = runs[runs["status"] == "ok"]
    per_setting: list[tuple[str, pd.DataFrame]] = []
    for key, g in transfer.optima.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        frames = []
        for _, opt in g[g["width"].isin([g["width"].min(), g["width"].max()])].iterrows():
            at_lr = np.isclose(ok["lr"], opt["lr_grid"], rtol=1e-9, atol=0)  # lr_grid: exp(ln)
            found = setting_rows(ok[(ok["width"] == opt["width"]) & at_lr], dict(zip(by, key)))
            if len(found):
                metrics = _per_layer(sweep_dir / "runs" / str(found["run_id"].iloc[0]))
                if metrics is not None:
                    frames.append(metrics.assign(width=int(opt["width"])))
        if frames:
            per_setting.append((setting_label(key), pd.concat(frames, ignore_index=True)))
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
            plot_diagnostics(
                m.dropna(subset=cols, how="all"), kind + "/", ax=ax, title=f"{label}: {kind}",
                legend_cols=legend_cols,
            )  # fmt: skip
        title, caption = _CAPTIONS["diagnostics"]
        out.append(Figure(title.format(kind=kind), caption.format(kind=kind), _png(fig)))
    return out


def _per_layer(run: Path) -> pd.DataFrame | None:
    """The per-layer (KIND/LAYER) columns of a run's metrics with step; None if none."""
    import pandas as pd

    from hptransfer.store import read_metrics

    try:
        records = read_metrics(run)
    except OSError:
        return None
    rows = []
    for record in records:
        layer = {k: v for k, v in record.items() if "/" in k}
        if layer and "step" in record:
            rows.append({"step": record["step"], **layer})
    return pd.DataFrame(rows) if rows else None


# ---------------------------------------------------------------------------------------------
# Entry point


def build_report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    *,
    by: Sequence[str] | None = None,
    reference: str | None = None,
    target_width: int | None = None,
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.json`` for a sweep; return their paths.

    sweep_dir: a results directory (``runs/<run_id>/...``, see store.py). out: the directory to
    write into (default: sweep_dir). by: the setting columns (default: `setting_columns`).
    reference: the value of by[0] whose L_inf the others' R_inf is measured against (default:
    the lowest L_inf). target_width: the width of the "what to use at width N" section
    (default: 8x the largest swept width). Raises ConfigError when the directory is missing,
    has no readable runs, names an unknown reference, or a target width below the swept ones;
    warns (ReportWarning) when some runs are unfinished or unreadable, and still writes the
    report.
    """
    from hptransfer.analysis.transfer import finished_runs, records, transfer_verdict
    from hptransfer.store import write_json, write_text

    sweep_dir = Path(sweep_dir)
    df, unreadable, problems = load_sweep(sweep_dir)
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
    runs = finished_runs(df)
    try:
        transfer = transfer_verdict(runs, by, reference=reference)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"--reference {reference}: {e}") from None
    provenance = _provenance(sweep_dir, df)
    headline = records(transfer.verdicts)
    target = answer(runs, by, target_width)

    out_dir = Path(out) if out is not None else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "optima": records(transfer.optima.rename(columns={"loss_interp": "loss"})),
        "fits": records(transfer.fits),
        "headline": headline,
        "answer": target,
        "counts": counts,
        "provenance": provenance,
    }
    summary_path = out_dir / "summary.json"
    write_json(summary_path, summary)

    html_path = out_dir / "report.html"
    page = render(
        name=sweep_dir.resolve().name,
        title=f"LR transfer report: {sweep_dir.name}",
        counts=counts,
        notice=notice,
        headline=headline,
        by=by,
        figures=_figures(sweep_dir, runs, transfer) if len(runs) else [],
        optima=transfer.optima,
        fits=transfer.fits,
        answer=target,
        provenance=provenance,
    )
    write_text(html_path, page)
    return html_path, summary_path
