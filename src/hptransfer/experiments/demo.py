"""``hptransfer demo``: the quickstart sweep, muP vs SP with Adam across widths.

Runs the packaged recipe ``recipes/demo.toml`` with the adaptive LR search, then prints, for
each parameterization, the optimal LR per width on the grid, how far it moved across widths
in grid steps of 2^(1/2), and the transfer verdict (analysis.transfer: the same numbers as the
report it writes next to the runs). The expected picture: muP's optimum stays put (<= 1 step)
while SP's moves (>= 2 steps). It ends with the answer: the base LR to use for a larger model
(width TARGET_WIDTH) per parameterization, with its interval and the rule it used, and the one
the data recommend (`analysis.predict`, the numbers of ``hptransfer predict DIR --width 2048``).
The settings and the numbers measured are in docs/sweeps.md.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from hptransfer.recipes import recipe_path

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_OUT = Path("hpt-results") / "demo"
RECIPE = recipe_path("demo.toml")
"""The demo's sweep spec."""
GRID_STEP = 2**0.5
BY = ("parameterization",)
TARGET_WIDTH = 2048
"""The larger model the demo predicts the base LR for (8x its largest width)."""


def shift_in_steps(optima: pd.DataFrame) -> float:
    """How far a setting's grid optimum moves across widths, in grid steps of 2^(1/2)."""
    logs = [math.log2(v) for v in optima["lr_grid"]]
    return (max(logs) - min(logs)) / math.log2(GRID_STEP)


def _verdict_line(v: dict) -> str:
    if v["verdict"] == "unclear":
        return f"  verdict: unclear ({v['note']})\n"
    pct = v["transfer_penalty_pct"]
    penalty = f", transfer penalty {pct:.2f} %" if math.isfinite(pct) else ""
    return (
        f"  verdict: {v['verdict']} (optimal LR x{v['drift_factor_per_doubling']:.2f} per "
        f"doubling of width{penalty})\n"
    )


def answer(runs: pd.DataFrame, stream: TextIO, width: int = TARGET_WIDTH) -> None:
    """Print the base LR at ``width`` per parameterization (rule, interval, warnings) and the
    recommended one; a sweep that supports no prediction says why."""
    from hptransfer.analysis.predict import LEVEL, predict_lr, recommend
    from hptransfer.errors import ConfigError

    stream.write(f"\nwhat to use at width {width} (hptransfer predict DIR --width {width}):\n")
    try:
        pred = predict_lr(runs, width, BY)
    except ConfigError as e:
        stream.write(f"  no prediction: {e}\n")
        return
    best, why = recommend(pred)
    for r in pred.itertuples():
        if not math.isfinite(r.lr):
            stream.write(f"  {r.label}: no prediction\n")
            continue
        stream.write(
            f"  {r.label}: base LR {r.lr:.4g} ({LEVEL:.0%} interval {r.lr_lo:.4g} .. "
            f"{r.lr_hi:.4g}; {r.rule}, drift x{2**r.drift_per_doubling:.2f} per doubling)\n"
        )
    for r in pred.itertuples():
        stream.writelines(f"  warning: {r.label}: {w}\n" for w in r.warnings)
    if best is not None:
        stream.write(f"  recommended: {pred.loc[best, 'label']}: {why}\n")


def report(df: pd.DataFrame, stream: TextIO) -> dict[str, float]:
    """Print the optimal LR per width and the verdict for each parameterization, then the
    answer at TARGET_WIDTH; return the shifts in grid steps."""
    from hptransfer.analysis.transfer import finished_runs, records, transfer_verdict

    runs = finished_runs(df)
    transfer = transfer_verdict(runs, BY)
    shifts: dict[str, float] = {}
    for v in sorted(records(transfer.verdicts), key=lambda v: str(v["parameterization"])):
        name = str(v["parameterization"])
        rows = transfer.optima_of(v)
        stream.write(f"\n{name}: optimal LR per width\n  width   lr*          log2(lr*)  loss\n")
        for row in rows.itertuples():
            stream.write(
                f"  {row.width:<7d} {row.lr_grid:<12.4g} {math.log2(row.lr_grid):<10.2f} "
                f"{row.loss_grid:.4f}\n"
            )
        shifts[name] = shift_in_steps(rows)
        stream.write(f"  moves by {shifts[name]:.1f} grid step(s) of 2^(1/2) across widths\n")
        stream.write(_verdict_line(v))
    answer(runs, stream)
    return shifts


def run_demo(
    out: str | Path = DEFAULT_OUT, workers: int | None = None, quiet: bool = False,
    stream: TextIO | None = None,
) -> dict[str, float]:  # fmt: skip
    """Run (or resume) the demo sweep into ``out``, print the table, write report.html;
    return the shifts."""
    from hptransfer.config import read_toml
    from hptransfer.errors import ConfigError
    from hptransfer.report import build_report
    from hptransfer.store import load_runs
    from hptransfer.sweep.runner import run_sweep
    from hptransfer.sweep.spec import parse_spec

    stream = stream if stream is not None else sys.stdout
    table = read_toml(RECIPE)
    if workers is not None:
        table["sweep"]["workers"] = workers
    spec = parse_spec(table, relative_to=RECIPE.parent, text=RECIPE.read_text())
    counts = run_sweep(spec, out, quiet=quiet)
    if counts.failed:
        raise ConfigError(f"{counts.failed} demo run(s) failed; see {out}/runs/*/summary.json")
    shifts = report(load_runs(out), stream)
    html, _ = build_report(out)
    stream.write(f"\nreport: {html}\n")
    return shifts
