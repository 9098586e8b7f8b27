"""``hptransfer demo``: the quickstart sweep, muP vs SP with Adam across widths.

Runs :data:`DEMO_SPEC` (also in recipes/demo.toml) with the adaptive LR search, then prints
the optimal LR per width for each parameterization and how far it moved across widths, in
grid steps of 2^(1/2). The expected picture: muP's optimum stays put (<= 1 step) while SP's
moves (>= 2 steps). The settings and the numbers measured are in docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_OUT = Path("hpt-results") / "demo"
GRID_STEP = 2**0.5

DEMO_SPEC = """\
# The quickstart sweep of `hptransfer demo`: SP (one global LR) vs muP (per-layer LR
# exponents), Adam, widths 32..256 (x8), adaptive LR search on the 2^(1/2) grid from an
# octave-pair start. About 2 minutes (53 runs) on 2 idle CPU cores with 2 workers.
[base]
model.depth = 2
model.head_dim = 16
param.base_width = 32
optimizer.name = "adam"
train.steps = 100
train.batch_size = 16
train.seq_len = 64
train.warmup_steps = 10
train.schedule = "cosine"
train.eval_every = 100
train.eval_batches = 8

[grid]
model.width = [32, 64, 256]
optimizer.lr = {min = 0.0009765625, max = 0.0625, step = "2^2"}

[[cases]]
param.name = "sp"
param.lr_exponents = "global"

[[cases]]
param.name = "mup"

[sweep]
workers = 2
adaptive = true
lr_refine = "2^(1/2)"
"""


def optima(df: pd.DataFrame) -> pd.DataFrame:
    """Per (parameterization, width): the optimal LR, from analysis.optimum when available."""
    try:
        from hptransfer.analysis.optimum import find_optima
    except ImportError:
        find_optima = None
    if find_optima is not None:
        table = find_optima(df, by=("parameterization",), n_boot=0)
        return table[["parameterization", "width", "lr_grid", "loss_grid"]]
    ok = df[(df["status"] == "ok") & df["final_eval_loss"].notna()]
    best = ok.loc[ok.groupby(["parameterization", "width"])["final_eval_loss"].idxmin()]
    best = best.rename(columns={"lr": "lr_grid", "final_eval_loss": "loss_grid"})
    return best[["parameterization", "width", "lr_grid", "loss_grid"]].reset_index(drop=True)


def shift_in_steps(table: pd.DataFrame, parameterization: str) -> float:
    """How far the optimal LR moves across widths, in grid steps of 2^(1/2)."""
    lrs = table.loc[table["parameterization"] == parameterization, "lr_grid"]
    logs = [math.log2(v) for v in lrs]
    return (max(logs) - min(logs)) / math.log2(GRID_STEP)


def report(df: pd.DataFrame, stream: TextIO) -> dict[str, float]:
    """Print the optimal LR per width for each parameterization; return the shifts in steps."""
    table = optima(df).sort_values(["parameterization", "width"])
    shifts: dict[str, float] = {}
    for name, rows in table.groupby("parameterization", sort=True):
        stream.write(f"\n{name}: optimal LR per width\n  width   lr*          log2(lr*)  loss\n")
        for row in rows.itertuples():
            stream.write(
                f"  {row.width:<7d} {row.lr_grid:<12.4g} {math.log2(row.lr_grid):<10.2f} "
                f"{row.loss_grid:.4f}\n"
            )
        shifts[str(name)] = shift_in_steps(table, str(name))
        stream.write(f"  moves by {shifts[str(name)]:.1f} grid step(s) of 2^(1/2) across widths\n")
    return shifts


def run_demo(
    out: str | Path = DEFAULT_OUT, workers: int | None = None, quiet: bool = False,
    stream: TextIO | None = None,
) -> dict[str, float]:  # fmt: skip
    """Run (or resume) the demo sweep into ``out``, print the table, write report.html;
    return the shifts."""
    import tomllib

    from hptransfer.config import ConfigError
    from hptransfer.report import build_report
    from hptransfer.store import load_runs
    from hptransfer.sweep.runner import run_sweep
    from hptransfer.sweep.spec import parse_spec

    stream = stream if stream is not None else sys.stdout
    table = tomllib.loads(DEMO_SPEC)
    if workers is not None:
        table["sweep"]["workers"] = workers
    spec = parse_spec(table, text=DEMO_SPEC)
    counts = run_sweep(spec, out, quiet=quiet)
    if counts.failed:
        raise ConfigError(f"{counts.failed} demo run(s) failed; see {out}/runs/*/summary.json")
    shifts = report(load_runs(out), stream)
    html, _ = build_report(out)
    stream.write(f"\nreport: {html}\n")
    return shifts


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="quickstart: muP vs SP LR sweep across widths (~2 min on 2 idle cores)",
        description="Run the built-in demo sweep (SP with one global LR vs muP, Adam, widths "
        "32-256) and print the optimal LR per width. Re-running resumes.",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results directory")
    parser.add_argument("--workers", type=int, help="concurrent runs (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    run_demo(args.out, workers=args.workers, quiet=args.quiet)
    return 0
