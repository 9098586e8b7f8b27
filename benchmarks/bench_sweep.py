"""Sweep benchmarks: adaptive LR search vs a dense grid, and runs per hour per worker count.

1. On the demo sweep (src/hptransfer/recipes/demo.toml), the adaptive search should find each
   (parameterization, width) optimum within 2^(1/4) of the dense-grid optimum (a 2^(1/4) grid
   over the demo's LR range) while spending at most 40% of the dense grid's training steps.
2. Runs per hour with the local executor at 1 and 2 workers on a fixed grid of tiny runs.

``run(quick=True)`` shrinks everything (fewer steps and widths) to finish in a few minutes;
the full run takes about 20 minutes on 2 idle CPU cores. With ``--out DIR`` the two searches
resume from DIR (their results do not depend on timing); the throughput part always runs
fresh. Usage: python benchmarks/bench_sweep.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from hptransfer.experiments.demo import RECIPE
from hptransfer.store import load_runs
from hptransfer.sweep import parse_spec, run_sweep

QUICK = {"train.steps": 30, "train.batch_size": 8}
QUICK_WIDTHS = [16, 32]


def _demo_table(quick: bool) -> dict[str, Any]:
    table = tomllib.loads(RECIPE.read_text())
    if quick:
        table["base"].update({"train": {**table["base"]["train"], "steps": 30, "batch_size": 8,
                                        "eval_every": 30}})  # fmt: skip
        table["grid"]["model"]["width"] = QUICK_WIDTHS
    return table


def _optima(directory: Path) -> dict[tuple[str, int], float]:
    df = load_runs(directory)
    ok = df[(df["status"] == "ok") & df["final_eval_loss"].notna()]
    best = ok.loc[ok.groupby(["parameterization", "width"])["final_eval_loss"].idxmin()]
    return {(r.parameterization, int(r.width)): float(r.lr) for r in best.itertuples()}


def adaptive_vs_dense(quick: bool, root: Path) -> dict[str, Any]:
    """Optima and training steps of the adaptive search and of the dense 2^(1/4) grid."""
    adaptive = _demo_table(quick)
    dense = _demo_table(quick)
    dense["grid"]["optimizer"]["lr"] = {**dense["grid"]["optimizer"]["lr"], "step": "2^(1/4)"}
    dense["sweep"]["adaptive"] = False
    out: dict[str, Any] = {}
    for name, table in (("adaptive", adaptive), ("dense", dense)):
        start = time.perf_counter()
        run_sweep(parse_spec(table), root / name, quiet=True)
        df = load_runs(root / name)
        out[name] = {"runs": len(df), "steps": int(df["steps"].fillna(0).sum()),
                     "wall_s": round(time.perf_counter() - start, 1)}  # fmt: skip
    a, d = _optima(root / "adaptive"), _optima(root / "dense")
    gaps = {f"{p}/{w}": round(abs(math.log2(a[(p, w)] / d[(p, w)])), 3) for p, w in d}
    out["optimum_gap_log2"] = gaps
    out["within_quarter_octave"] = all(g <= 0.25 + 1e-9 for g in gaps.values())
    out["step_ratio"] = round(out["adaptive"]["steps"] / out["dense"]["steps"], 3)
    return out


def runs_per_hour(quick: bool, root: Path) -> dict[str, float]:
    """Throughput of the local executor on a fixed grid of tiny real runs."""
    table = {
        "base": {"model": {"width": 32, "depth": 1, "head_dim": 16},
                 "train": {"steps": 20 if quick else 60, "batch_size": 8, "seq_len": 64,
                           "eval_every": 1000, "eval_batches": 2}},
        "grid": {"seed": list(range(4 if quick else 12)), "optimizer": {"lr": [1e-3, 4e-3]}},
    }  # fmt: skip
    out = {}
    for workers in (1, 2):
        spec = parse_spec({**table, "sweep": {"workers": workers}})
        start = time.perf_counter()
        counts = run_sweep(spec, root / f"throughput-{workers}", quiet=True)
        out[f"workers_{workers}"] = round(3600 * counts.finished / (time.perf_counter() - start))
    return out


def run(quick: bool, out: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        search_root = Path(out) if out else Path(tmp)
        return {"quick": quick, "search": adaptive_vs_dense(quick, search_root),
                "runs_per_hour": runs_per_hour(quick, Path(tmp))}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="keep (and resume) the two searches' results here")
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.out), indent=1))
