"""The analysis shared by the LR-transfer reproductions: optimum per x, drift and penalty.

The numbers are analysis.transfer's verdict (the same the report and the demo print), written
per setting as one record: the setting's label and by-values, the x values, the optimal LR
(interpolated, log2) and the loss there per x, which optima are unbracketed, the optimum's
move in log2 per doubling of x, the penalty (percent of the best loss) of reusing the smallest
x's optimum at the largest, and [K]'s E, kappa and R_inf (relative to the lowest L_inf among
the settings given); with several seeds each of these has its interval over seeds
(``<metric>_lo``, ``<metric>_hi``: min and max of the per-seed values; None with one seed)
and where the optimum is unbracketed: ``mean_edges`` (the x values where the seed-mean
optimum is) and ``seed_edges`` (the [x, seed] pairs where a single seed's is).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hptransfer.analysis.transfer import (
    LOSS,
    SEED_METRICS,
    finished_runs,
    plain,
    setting_rows,
    transfer_verdict,
)
from hptransfer.experiments.repro.reproduction import Record, Reproduction

if TYPE_CHECKING:
    import matplotlib.figure
    import pandas as pd

    from hptransfer.analysis.transfer import Transfer
    from hptransfer.experiments.repro.verdict import Finding


def transfer_table(
    df: pd.DataFrame, by: Sequence[str], label: Callable[[Record], str], x: str = "width"
) -> tuple[Transfer, list[Record]]:
    """The transfer verdict of each setting, and one record of numbers per setting.

    ``x`` is the scaled dimension (a column of ``df``: width, or model.depth for depth
    transfer); it stands in for width in the verdict, so "per doubling" means per doubling of
    x. The fits gain a ``setting`` column (the label).
    """
    transfer = transfer_verdict(finished_runs(df, x), by)
    records = []
    for fit in transfer.fits.to_dict("records"):
        key = {c: plain(fit[c]) for c in by}
        mine = transfer.optima_of(key)
        records.append(
            {
                "setting": label(key),
                **key,
                x: [int(w) for w in mine["width"]],
                "log2_lr_opt": [round(math.log2(v), 3) for v in mine["lr_interp"]],
                "loss_opt": [round(float(v), 4) for v in mine["loss_interp"]],
                "at_edge": [bool(v) for v in mine["at_edge"]],
                "mean_edges": [int(w) for w, e in zip(mine["width"], mine["at_edge"]) if e],
                "seed_edges": _seed_edges(transfer, key),
                "drift_per_doubling": _round(fit["drift_per_doubling"]),
                "transfer_penalty_pct": _round(fit["transfer_penalty_pct"]),
                "extrap_penalty_pct": _round(fit["extrap_penalty_pct"]),
                "E": _round(fit["E"]),
                "kappa": _round(fit["kappa"]),
                "R_inf": _round(fit["R_inf"]),
                **{
                    f"{m}_{end}": _round(fit.get(f"{m}_{end}", math.nan))
                    for m in SEED_METRICS
                    for end in ("lo", "hi")
                },  # fmt: skip
            }
        )
    transfer.fits["setting"] = [r["setting"] for r in records]
    return transfer, records


def _seed_edges(transfer: Transfer, key: Record) -> list[list[int]]:
    """[x, seed] of each single-seed optimum of the setting ``key`` that sits at the edge of
    the LR window (empty with one seed)."""
    if transfer.seed_optima is None:
        return []
    mine = setting_rows(transfer.seed_optima, key)
    edge = mine[mine["at_edge"].astype(bool)].sort_values(["width", "seed"])
    return [[int(w), int(s)] for w, s in zip(edge["width"], edge["seed"])]


def _round(value: Any, digits: int = 4) -> float | None:
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def fmt(value: Any, digits: int = 2) -> str:
    """A signed number in a Markdown table (no -0.00), n/a for None."""
    if value is None:
        return "n/a"
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def spread(rec: Record, key: str, digits: int = 2) -> str:
    """A record's number with its seed interval, ``+0.12 [-0.05, +0.30]``; n/a for None."""
    from hptransfer.experiments.repro.verdict import interval

    lo, hi = rec.get(f"{key}_lo"), rec.get(f"{key}_hi")
    if lo is None or hi is None:
        return fmt(rec.get(key), digits)
    return interval(rec.get(key), lo, hi, digits)


def save(fig: matplotlib.figure.Figure, path: Path) -> str:
    """Write the figure as PNG, close it, return the path."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def sweep_figure(repro: Reproduction, df: pd.DataFrame, root: Path) -> str:
    """NAME-sweep.png: loss against LR, one panel per setting (titled by its label), one line
    per x, stars at the optima."""
    from hptransfer.plots import plot_lr_sweep

    data = finished_runs(df, repro.x)
    data["setting"] = [repro.label(dict(zip(repro.by, row)))
                       for row in data[list(repro.by)].itertuples(index=False)]  # fmt: skip
    fig = plot_lr_sweep(data, ["setting"], LOSS, x_label=repro.x)
    return save(fig, root / f"{repro.name}-sweep.png")


def optima_panels(axes: Sequence[Any], records: list[Record], x: str = "width",
                  style: Callable[[Record], Record] | None = None) -> None:  # fmt: skip
    """Log2 optimal LR and the loss there against x, on two given panels."""
    from hptransfer.plots import plot_optimum

    plot_optimum(records, "log2_lr_opt", ax=axes[0], x=x, style=style)
    plot_optimum(records, "loss_opt", ax=axes[1], x=x, style=style)


def transfer_lines(records: list[Record], x: str) -> list[str]:
    """A Markdown table of transfer records: optimal LR and loss per x, drift, penalty."""
    lines = [
        f"| setting | {x} | log2 optimal LR | loss at optimum | drift / doubling "
        "| transfer penalty % |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        lrs = ", ".join(f"{v:.2f}" + ("*" if e else "")
                        for v, e in zip(r["log2_lr_opt"], r["at_edge"]))  # fmt: skip
        lines.append(
            f"| {r['setting']} | {', '.join(map(str, r[x]))} | {lrs} | "
            f"{', '.join(f'{v:.3f}' for v in r['loss_opt'])} | "
            f"{spread(r, 'drift_per_doubling')} | {spread(r, 'transfer_penalty_pct')} |"
        )
    lines.append("(* = optimum at the edge of the LR range tried: not bracketed; [min, max] over "
                 "seeds where a sweep has several)")  # fmt: skip
    return lines


def finish(
    repro: Reproduction, root: Path, records: list[Record], figures: list[str],
    lines: list[str] | None = None, transfer: Transfer | None = None,
    extra: Record | None = None, more: Sequence[Finding] = (),
) -> Record:  # fmt: skip
    """Write NAME.json; return the numbers (settings, figures, Markdown table lines, ``extra``
    (an analysis' own numbers), and with ``transfer`` and the reproduction's claims, the
    findings, with ``more`` (findings of an analysis' own numbers) after them, and the
    verdict)."""
    from dataclasses import asdict

    from hptransfer.experiments.repro.verdict import verdict_lines, word
    from hptransfer.store import write_json

    table = list(lines if lines is not None else transfer_lines(records, repro.x))
    numbers: Record = {"name": repro.name, "settings": records, "figures": figures,
                       **(extra or {})}  # fmt: skip
    if transfer is not None and repro.claims is not None:
        findings = [*repro.claims(transfer, records), *more]
        table += ["", *verdict_lines(findings)]
        numbers["findings"] = [{**asdict(f), "state": f.state} for f in findings]
        numbers["verdict"] = word(findings)
    numbers["table"] = table
    write_json(root / f"{repro.name}.json", numbers)
    return numbers


def analyse_transfer(
    repro: Reproduction, df: pd.DataFrame, root: Path,
    more: Callable[[Transfer, list[Record]], tuple[list[str], Record]] | None = None,
) -> Record:  # fmt: skip
    """Optimal LR and loss per x for each setting, drift and penalty; two figures. An analysis
    built on it passes ``more``: (the transfer verdict, the settings) -> its own table lines
    (after the transfer table, before the findings) and numbers (into NAME.json)."""
    import matplotlib.pyplot as plt

    transfer, records = transfer_table(df, repro.by, repro.label, repro.x)
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8), layout="constrained")
    optima_panels(axes, records, repro.x, repro.style)
    axes[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figures = [save(fig, root / f"{repro.name}.png"), sweep_figure(repro, df, root)]
    lines, extra = more(transfer, records) if more is not None else ([], {})
    return finish(repro, root, records, figures, [*transfer_lines(records, repro.x), *lines],
                  transfer=transfer, extra=extra)  # fmt: skip
