"""Report on a large sweep: load_runs, the fits and build_report on 5,000 synthetic runs.

A results directory with 4 settings (sp / mup x adam / sgd) x 5 widths x 25 LRs x 10 seeds is
written in the store's layout (config.json, summary.json with 200 losses, env.json, and a
metrics.jsonl of 50 steps with per-layer keys), then timed: load_runs alone, find_optima +
fit_transfer alone, and build_report end to end (which repeats both). Peak memory is the
process's max RSS (resource.getrusage), before and after the timed part. Target: report < 60 s.

Usage: ``python benchmarks/bench_report.py [--quick] [--keep DIR]``; ``run(quick)``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = (("sp", "adam", 1.0), ("mup", "adam", 0.0), ("sp", "sgd", 0.5), ("mup", "sgd", 0.0))
WIDTHS = (64, 128, 256, 512, 1024)
N_LRS, N_SEEDS, N_LOSSES, N_STEPS = 25, 10, 200, 50


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def write_sweep(root: Path, n_seeds: int) -> int:
    """Write the synthetic sweep; return the number of runs."""
    rng = random.Random(0)
    lrs = [2.0 ** (-14 + 0.5 * k) for k in range(N_LRS)]
    runs = root / "runs"
    runs.mkdir(parents=True)
    (root / "sweep.toml").write_text(
        '[grid]\nparam.name = ["sp", "mup"]\noptimizer.name = ["adam", "sgd"]\n'
        f"model.width = {list(WIDTHS)}\nseed = {list(range(n_seeds))}\n"
    )
    env = {"torch_version": "2.13.0", "corpus_sha256": "0" * 64, "git_revision": "bench"}
    n = 0
    for param, opt, beta in SETTINGS:
        for width in WIDTHS:
            best = 2.0**-7 * (width / 64) ** -beta
            for lr in lrs:
                for seed in range(n_seeds):
                    gap = math.log(lr / best)
                    loss = 3 + 2 * width**-0.5 + 0.04 * gap**2 + rng.gauss(0, 0.003)
                    ok = gap < math.log(8)
                    run = runs / f"{param}-{opt}-{width}-{lr:.6g}-{seed}"
                    run.mkdir()
                    config = {
                        "model": {"width": width},
                        "param": {"name": param},
                        "optimizer": {"name": opt, "lr": lr},
                        "seed": seed,
                    }
                    summary = {
                        "status": "ok" if ok else "diverged",
                        "final_eval_loss": loss if ok else None,
                        "best_eval_loss": loss if ok else None,
                        "steps": N_LOSSES,
                        "wall_time_s": 1.0,
                        "losses": [loss + 1 / (i + 1) for i in range(N_LOSSES)],
                    }
                    (run / "config.json").write_text(json.dumps(config))
                    (run / "summary.json").write_text(json.dumps(summary))
                    (run / "env.json").write_text(json.dumps({**env, "seed": seed}))
                    (run / "metrics.jsonl").write_text(
                        "".join(
                            json.dumps(
                                {
                                    "step": s,
                                    "loss": loss,
                                    "underflow/h0": s / 1e3,
                                    "underflow/out": s / 5e2,
                                }
                            )
                            + "\n"
                            for s in range(N_STEPS)
                        )
                    )
                    n += 1
    return n


def run(quick: bool = False, keep: Path | None = None) -> dict[str, float]:
    """Time load, fits and report on a synthetic sweep (5,000 runs; 1,000 with quick)."""
    from hptransfer.analysis import find_optima, fit_transfer
    from hptransfer.report import build_report, setting_columns
    from hptransfer.store import load_runs

    with tempfile.TemporaryDirectory() as tmp:
        root = keep or Path(tmp) / "sweep"
        t0 = time.perf_counter()
        n_runs = write_sweep(root, n_seeds=2 if quick else N_SEEDS)
        write_s = time.perf_counter() - t0
        rss_before = _rss_mb()

        t0 = time.perf_counter()
        df = load_runs(root)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        by = setting_columns(df)
        fits = fit_transfer(find_optima(df, by), df, by)
        fits_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        html_path, _ = build_report(root)
        report_s = time.perf_counter() - t0
        result = {
            "n_runs": n_runs,
            "n_settings": len(fits),
            "write_s": write_s,
            "load_s": load_s,
            "fits_s": fits_s,
            "report_s": report_s,
            "html_mb": html_path.stat().st_size / 2**20,
            "rss_before_mb": rss_before,
            "peak_rss_mb": _rss_mb(),
        }
    for key, value in result.items():
        print(f"{key:>14}: {value:.2f}" if isinstance(value, float) else f"{key:>14}: {value}")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 runs instead of 5,000")
    ap.add_argument("--keep", type=Path, help="write the sweep here and keep it")
    args = ap.parse_args()
    run(args.quick, args.keep)
