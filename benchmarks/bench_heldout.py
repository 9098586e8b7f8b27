"""Held-out validation of `predict`: sweep small widths, predict the optimum at larger ones, check.

1. Sweep: nanodo (depth 2, head dim 16, base width 32) at widths 32, 64, 128 with seeds 0-2,
   for muP, SP with per-layer LR exponents and SP with one global LR (the control), each with
   Adam and a second optimizer (Adafactor by default), through the sweep runner with [E]'s
   adaptive LR search on the half-octave lattice (a spec written to OUT/sweep/sweep.toml).
2. Predict: `analysis.predict.predict_lr` gives each setting's base LR at every held-out width
   (256 and 512) from those runs alone.
3. Check: at each held-out width, a half-octave grid centred on the prediction (the prediction
   x 2^(k/2), k = -1..1) with the same seeds, widened by half an octave at a time (up to 3
   times in all) while the best seed-mean loss sits at the grid's edge. `find_optima` on
   these runs gives the true optimum eta* and its loss L* (the vertex of the quadratic in
   ln eta fitted within one octave of the best point).

Reported per (setting, held-out width): error = log2(eta_pred / eta*) in octaves (positive:
the prediction is too large), whether eta* lies in the prediction's interval, and the loss lost
by training at eta_pred instead of eta*, in percent of L*: measured (the seed-mean loss at
eta_pred, a grid point) and fitted (the quadratic's a (ln eta_pred - ln eta*)^2).

Everything resumes: a killed run continues where it stopped (`--out DIR` keeps the runs). The
CPU default (about 40 CPU-minutes with 2 workers) validates the second optimizer at 256 only;
``--full`` runs the GPU version (held-out widths 256..2048, 300 steps of 32 x 128 tokens, both
optimizers everywhere) and ``--device cuda`` puts the runs on the GPU.

Usage: python benchmarks/bench_heldout.py [--out DIR] [--device cpu|cuda] [--full]
       [--second OPT|none] [--workers N] [--second-heldout W ...] [--json FILE]
(docs/predict.md has the numbers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hptransfer.analysis.optimum import find_optima
from hptransfer.analysis.predict import predict_lr
from hptransfer.store import load_runs
from hptransfer.sweep import parse_spec, run_sweep

BY = ["parameterization", "param.lr_exponents", "optimizer"]
SETTINGS = (("mup", "per_layer"), ("sp", "per_layer"), ("sp", "global"))
START = {"adam": (2.0**-10, 2.0**-4), "adafactor": (2.0**-6, 2.0**0)}
"""Each optimizer's starting LR grid (octave-pairs between these); the search extends it."""
HALF = 2.0**0.5
MAX_WIDEN = 3


def _base(full: bool, device: str) -> dict[str, Any]:
    steps, batch, seq = (300, 32, 128) if full else (80, 8, 32)
    return {
        "model": {"name": "nanodo", "depth": 2, "head_dim": 16},
        "param": {"base_width": 32},
        "train": {"steps": steps, "batch_size": batch, "seq_len": seq, "device": device,
                  "warmup_steps": steps // 10, "schedule": "cosine", "eval_every": steps,
                  "eval_batches": 16},
    }  # fmt: skip


def _case(name: str, exponents: str, opt: str) -> dict[str, Any]:
    return {"param.name": name, "param.lr_exponents": exponents, "optimizer.name": opt}


def sweep_table(args: argparse.Namespace, opt: str) -> dict[str, Any]:
    """The spec of step 1 for optimizer ``opt``: every setting, adaptive LR search per
    (setting, width). One spec per optimizer, so adding the second optimizer later resumes."""
    cases = [
        {**_case(n, e, opt), "optimizer.lr": {"min": START[opt][0], "max": START[opt][1],
                                              "step": "2^2"}}
        for n, e in SETTINGS
    ]  # fmt: skip
    return {
        "base": _base(args.full, args.device),
        "grid": {"model": {"width": list(args.widths)}, "seed": list(range(args.seeds))},
        "cases": cases,
        "sweep": {"workers": args.workers, "adaptive": True, "lr_refine": "2^(1/2)"},
    }


def _toml(table: dict[str, Any]) -> str:
    """The spec as TOML text (stored as sweep.toml for `hptransfer sweep` to resume)."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, str) else repr(v)

    lines = []
    for section in ("base", "grid", "sweep"):
        lines.append(f"[{section}]")
        for k, v in table[section].items():
            items = v.items() if isinstance(v, dict) and section != "sweep" else [(None, v)]
            for sub, x in items:
                lines.append(f"{k}.{sub} = {value(x)}" if sub else f"{k} = {value(x)}")
    for case in table["cases"]:
        lines += ["", "[[cases]]", *(f"{k} = {value(v)}" for k, v in case.items())]
    return "\n".join(lines) + "\n"


def predictions(sweep_dir: Path, widths: list[int]) -> pd.DataFrame:
    """predict_lr at every held-out width (one row per setting and width)."""
    df = load_runs(sweep_dir)
    out = [predict_lr(df, w, BY, n_boot=200).assign(target=w) for w in widths]
    return pd.concat(out, ignore_index=True)


def _widened(runs: pd.DataFrame, lrs: list[float]) -> list[float]:
    """``lrs`` plus the next half-octave point beyond an edge where the best seed-mean is."""
    mean = runs.groupby("lr")["final_eval_loss"].mean()
    if runs.empty or mean.isna().all() or len(lrs) >= 3 + MAX_WIDEN:
        return lrs
    best = float(mean.idxmin())
    ok = runs[runs["status"] == "ok"]["lr"]
    if math.isclose(best, max(lrs)) and math.isclose(best, ok.max()):
        return [*lrs, max(lrs) * HALF]
    if math.isclose(best, min(lrs)):
        return [min(lrs) / HALF, *lrs]
    return lrs


def check_table(args: argparse.Namespace, grids: dict[tuple, list[float]]) -> dict[str, Any]:
    """The spec of step 3: one case per (setting, optimizer, held-out width) with its LR grid."""
    cases = [
        {**_case(n, e, opt), "model.width": w, "optimizer.lr": lrs}
        for (n, e, opt, w), lrs in grids.items()
    ]
    return {
        "base": _base(args.full, args.device),
        "grid": {"seed": list(range(args.seeds))},
        "cases": cases,
        "sweep": {"workers": args.workers},
    }


def check(
    pred: pd.DataFrame, args: argparse.Namespace, root: Path, opt: str, width: int
) -> pd.DataFrame:
    """Step 3 for one optimizer at one held-out width: run its grids (widening at an edge)."""
    grids = {}
    for r in pred[(pred["target"] == width) & (pred["optimizer"] == opt)].to_dict("records"):
        if np.isfinite(r["lr"]):
            grids[(*(r[c] for c in BY), width)] = [r["lr"] * HALF**k for k in range(-1, 2)]
    where = root / f"{opt}-w{width}"
    while True:  # each grid (first or widened) is a spec of its own in one directory
        table = check_table(args, grids)
        text = _toml(table)
        copy = f"sweep-{hashlib.sha256(text.encode()).hexdigest()[:12]}.toml"
        run_sweep(parse_spec(table, text=text), where, quiet=args.quiet, spec_copy=copy)
        df = load_runs(where)
        grown = {}
        for key, lrs in grids.items():
            n, e, opt, w = key
            mine = df[(df["parameterization"] == n) & (df["param.lr_exponents"] == e)
                      & (df["optimizer"] == opt)]  # fmt: skip
            grown[key] = _widened(mine, lrs)
        if grown == grids:
            return df
        grids = grown


def score(pred: pd.DataFrame, held: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, width): prediction error in octaves, coverage and the loss lost."""
    opt = find_optima(held, BY, n_boot=200)
    rows = []
    for r in opt.to_dict("records"):
        mine = pred[(pred["target"] == r["width"])]
        for col in BY:
            mine = mine[mine[col] == r[col]]
        p = mine.iloc[0]
        cell = held[(held["width"] == r["width"])]
        for col in BY:
            cell = cell[cell[col] == r[col]]
        at_pred = cell[np.isclose(cell["lr"], p["lr"], rtol=1e-6)]
        measured = float(at_pred["final_eval_loss"].mean()) if len(at_pred) else np.nan
        star, loss_star = r["lr_interp"], r["loss_interp"]
        fitted = r["curvature"] * math.log(p["lr"] / star) ** 2 if r["interp_ok"] else np.nan
        rows.append({
            "setting": f"{r['parameterization']}/{r['param.lr_exponents']}/{r['optimizer']}",
            "width": int(r["width"]), "rule": p["rule"], "lr_pred": p["lr"],
            "lr_lo": p["lr_lo"], "lr_hi": p["lr_hi"], "lr_true": star,
            "true_lo": r["lr_interp_lo"], "true_hi": r["lr_interp_hi"],
            "error_octaves": math.log2(p["lr"] / star),
            "covered": bool(p["lr_lo"] <= star <= p["lr_hi"]),
            "at_edge": bool(r["at_edge"]), "loss_star": loss_star,
            "loss_lost_pct_measured": 100 * (measured - loss_star) / loss_star,
            "loss_lost_pct_fitted": 100 * fitted / loss_star,
            "n_lrs": int(r["n_lrs"]), "warnings": "; ".join(p["warnings"]),
        })  # fmt: skip
    return pd.DataFrame(rows)


def cpu_seconds() -> float:
    """CPU time of this process and its (finished, waited-for) workers."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Steps 1-3; held-out widths in increasing order, the result written after each check."""
    out = Path(args.out)
    start = time.perf_counter()
    for opt in args.optimizers:
        table = sweep_table(args, opt)
        spec = parse_spec(table, text=_toml(table))
        run_sweep(spec, out / "sweep", quiet=args.quiet, spec_copy=f"sweep-{opt}.toml")
    swept = load_runs(out / "sweep")
    pred = predictions(out / "sweep", sorted({*args.heldout, *args.second_heldout}))
    held, result = [], {}
    order = sorted(
        [(w, 0, args.optimizers[0]) for w in args.heldout]
        + [(w, 1, args.optimizers[-1]) for w in args.second_heldout]
    )  # the cheapest first: a run stopped at the deadline has the small widths' answers
    for width, _, opt in order:
        held.append(check(pred, args, out / "heldout", opt, width))
        runs = pd.concat(held, ignore_index=True)
        result = {
            "command": args.command,
            "runs_sweep": len(swept), "runs_heldout": len(runs),
            "steps": int(swept["steps"].fillna(0).sum() + runs["steps"].fillna(0).sum()),
            "run_wall_s": round(float(swept["wall_time_s"].sum() + runs["wall_time_s"].sum()), 1),
            "wall_s": round(time.perf_counter() - start, 1),
            "cpu_s_this_invocation": round(cpu_seconds(), 1),
            "rows": score(pred, runs).round(4).to_dict("records"),
        }  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="heldout-bench", help="results directory (resumes)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--full", action="store_true", help="GPU size: longer runs, to 2048")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--second",
        default="adafactor",
        choices=[*sorted(START), "none"],
        help="the second optimizer (none: Adam only)",
    )
    parser.add_argument(
        "--second-heldout",
        type=int,
        nargs="*",
        default=None,
        help="held-out widths for the second optimizer (default: 256 on CPU)",
    )
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)  # fmt: skip
    args.widths = (32, 64, 128)
    args.heldout = (256, 512, 1024, 2048) if args.full else (256, 512)
    if args.second_heldout is None:
        args.second_heldout = args.heldout if args.full else (256,)
    args.optimizers = ("adam",) if args.second == "none" else ("adam", args.second)
    if args.second == "none":
        args.second_heldout = ()
    args.command = "python benchmarks/bench_heldout.py " + " ".join(argv or [])
    return args


if __name__ == "__main__":
    import sys

    ns = parse(sys.argv[1:])
    res = run(ns)
    print(json.dumps(res, indent=1, default=float))
