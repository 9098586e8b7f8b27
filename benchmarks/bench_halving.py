"""Successive halving vs dense grids, replayed from the dense grids' stored learning curves.

Runs are deterministic and halving only stops them, so an adaptive sweep with ``[halving]`` can
be replayed exactly from a dense grid over the same LRs (same configs, so the same run ids): the
real sweep runner, search, worker and halving hook run with a train function (`replay_train`)
that replays the dense run's metrics.jsonl records instead of training. Per validation sweep:

1. ``dense``: the dense 2^(1/4) grid, trained for real (the CPU cost; ``--out`` keeps it).
2. ``replay``: the adaptive search alone, and with halving at each margin of ``--margins``,
   each with every refinement of ``--refines`` (``[sweep] refine``): training steps as a
   fraction of the dense grid's, the seconds its runs would take (each dense run's time, cut
   where the run stopped), and each (width, setting) optimum's gap in octaves to the dense
   grid's, both as the grid minimum (``grid_gaps``) and as the package's estimator,
   `find_optima`, gives it (``fit_gaps``; what report and plots use). ``moved``: an optimum
   whose gap is above 1/4 octave by either.
3. ``--real NAME``: the same adaptive halving sweep (first margin, last refinement) trained for
   real; it must equal the replay (statuses and steps of every run).

Sweeps: the demo (widths 32 and 64 here), an SP sweep with one global LR (Adam), a Muon
sweep, and a muP sweep whose large LRs plateau (grad clipping, no divergence test).
Usage: python benchmarks/bench_halving.py --out DIR [--margins 0.05,0.1] [--real muon]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from hptransfer.analysis import find_optima
from hptransfer.config import REFINES, from_dict
from hptransfer.experiments.demo import RECIPE
from hptransfer.store import RunDir, Summary, load_runs, read_json, read_metrics, run_dir
from hptransfer.sweep import parse_spec, run_sweep
from hptransfer.sweep.executors import Executor, Outcome
from hptransfer.sweep.worker import RunTask, execute

DENSE_STEP = "2^(1/4)"
REPLAY_FROM = "HPTRANSFER_REPLAY_FROM"


def _demo() -> dict[str, Any]:
    table = tomllib.loads(RECIPE.read_text())
    table["base"]["train"].update({"eval_every": 10})
    table["grid"]["model"]["width"] = [32, 64]
    return table


def _small(
    case: dict[str, Any], lr: tuple[float, float], steps: int = 45, batch: int = 8,
    widths: tuple[int, ...] = (32, 64), **base: Any,
) -> dict[str, Any]:  # fmt: skip
    train = {"steps": steps, "batch_size": batch, "seq_len": 64, "warmup_steps": steps // 10,
             "schedule": "cosine", "eval_every": steps // 9, "eval_batches": 8}  # fmt: skip
    b: dict[str, Any] = {"model": {"depth": 2, "head_dim": 16}, "param": {"base_width": 32},
                         "optimizer": {"name": "adam"}, "train": train}  # fmt: skip
    for dotted, value in base.items():
        section, key = dotted.split("__")
        b[section][key] = value
    return {
        "base": b,
        "grid": {"model": {"width": list(widths)},
                 "optimizer": {"lr": {"min": lr[0], "max": lr[1], "step": "2^2"}}},
        "cases": [case],
        "sweep": {"workers": 2, "adaptive": True, "lr_refine": "2^(1/4)"},
    }  # fmt: skip


GRIDS = {
    "demo": _demo,
    "sp_global": lambda: _small(
        {"param": {"name": "sp", "lr_exponents": "global"}},
        (2**-12, 2**-2),
        steps=90,
        batch=16,
        widths=(32, 128),
    ),  # fmt: skip
    "muon": lambda: _small({"param": {"name": "mup"}}, (2**-10, 2**-2), optimizer__name="muon"),
    "plateau": lambda: _small(
        {"param": {"name": "mup"}}, (2**-10, 2**0), train__diverge_factor=1e6, train__grad_clip=1.0
    ),  # fmt: skip
}


DENSE_RANGE = {"demo": (2**-10, 2**0)}
"""A dense grid's LR range where it differs from the search's starting grid: the range the
search visits (the demo's searches climb the plateau above its start's 2^-4), so that no
proposed LR is outside the dense grid."""


def dense_table(name: str) -> dict[str, Any]:
    table = copy.deepcopy(GRIDS[name]())
    lr = {**table["grid"]["optimizer"]["lr"], "step": DENSE_STEP}
    if name in DENSE_RANGE:
        lr["min"], lr["max"] = DENSE_RANGE[name]
    table["grid"]["optimizer"]["lr"] = lr
    table["sweep"]["adaptive"] = False
    return table


def halving_table(name: str, margin: float | None, refine: str) -> dict[str, Any]:
    """The adaptive sweep, with ``[halving]`` at ``margin`` (None: without halving)."""
    table = copy.deepcopy(GRIDS[name]())
    table["sweep"]["lr_refine"] = "2^(1/4)"  # refined as finely as the dense grid
    table["sweep"]["refine"] = refine
    if margin is not None:
        table["halving"] = {"margin": margin}
    return table


def _lattice_key(cfg: Any) -> str:
    """A config with its LR as a whole number of quarter octaves: the search's LRs and the
    dense grid's agree on the lattice, not always in the 12th digit (and so the run id)."""
    table = cfg.to_dict()
    table["optimizer"]["lr"] = round(4 * math.log2(cfg.optimizer.lr))
    return json.dumps(table, sort_keys=True)


_DENSE: dict[str, dict[str, Path]] = {}


def _dense_run(cfg: Any) -> Path | None:
    """The dense grid's run directory of ``cfg``'s config (REPLAY_FROM names the grid)."""
    root = os.environ[REPLAY_FROM]
    if root not in _DENSE:
        runs = Path(root) / "runs"
        _DENSE[root] = {
            _lattice_key(from_dict(read_json(d / "config.json"))): d for d in runs.iterdir()
        }
    return _DENSE[root].get(_lattice_key(cfg))


def replay_train(cfg: Any, out_dir: str | Path | None = None, progress: Any = None) -> dict:
    """A train function that replays the dense grid's run of the same config: its records go to
    ``progress`` and ``out_dir`` as train logs them. An LR outside the dense grid counts as
    diverged and is charged a whole run (REPLAY_OUTSIDE counts them)."""
    source = _dense_run(cfg)
    run = RunDir(out_dir) if out_dir is not None else None
    if source is None:
        summary = Summary(cfg.run_id(), "diverged", steps=cfg.train.steps).to_dict()
        summary["outside"] = True
        if run is not None:
            run.finish(Summary(cfg.run_id(), "diverged", steps=cfg.train.steps))
        return summary
    for record in read_metrics(source):
        if run is not None:
            run.log(record)
        if progress is not None:
            progress(record)
    summary = {**read_json(source / "summary.json"), "run_id": cfg.run_id()}
    if run is not None:
        run.finish(Summary(**summary))
    return summary


class InlineExecutor(Executor):
    """Runs each task in this process when submitted (one at a time: a replay is instant)."""

    workers = 1

    def __init__(self) -> None:
        self._done: list[Outcome] = []

    def submit(self, task: RunTask) -> None:
        self._done.append((task, execute(task)))

    def wait(self, timeout: float) -> list[Outcome]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        pass


def _optima(directory: Path, column: str) -> dict[str, float]:
    """Each (parameterization/width) optimum by find_optima: its ``lr_grid`` (the grid
    minimum) or ``lr_interp`` (the estimate)."""
    found = find_optima(load_runs(directory, errors="ignore"), by=("parameterization",))
    return {f"{r.parameterization}/{int(r.width)}": float(getattr(r, column))
            for r in found.itertuples()}  # fmt: skip


def _gaps(dense_dir: Path, out: Path, column: str) -> dict[str, float | None]:
    dense, found = _optima(dense_dir, column), _optima(out, column)
    return {k: round(abs(math.log2(found[k] / lr)), 3) if k in found else None
            for k, lr in dense.items()}  # fmt: skip


def _run_seconds(out: Path) -> float:
    """The replayed runs' training seconds: each dense run's wall time, cut where it stopped."""
    total = 0.0
    for r in load_runs(out, errors="ignore").itertuples():
        source = _dense_run(from_dict(read_json(run_dir(out, r.run_id) / "config.json")))
        if source is not None:
            whole = read_json(source / "summary.json")
            total += whole["wall_time_s"] * (r.steps or 0) / max(whole["steps"], 1)
    return total


def _steps(directory: Path) -> int:
    return int(load_runs(directory, errors="ignore")["steps"].fillna(0).sum())


def replay(name: str, root: Path, margin: float | None, refine: str) -> dict[str, Any]:
    """The adaptive (halving) sweep replayed from ``root/name/dense``; steps and optimum gaps."""
    dense_dir = root / name / "dense"
    out = root / name / (f"replay-{refine}" + ("" if margin is None else f"-m{margin:g}"))
    os.environ[REPLAY_FROM] = str(dense_dir)
    os.environ["HPTRANSFER_TRAIN_FN"] = f"{__name__}:replay_train"
    try:
        run_sweep(parse_spec(halving_table(name, margin, refine)), out, quiet=True,
                  executor=InlineExecutor())  # fmt: skip
    finally:
        del os.environ["HPTRANSFER_TRAIN_FN"]
    df = load_runs(out, errors="ignore")
    grid, fit = _gaps(dense_dir, out, "lr_grid"), _gaps(dense_dir, out, "lr_interp")
    outside = [r for r in df.itertuples() if _dense_run(from_dict(read_json(
        run_dir(out, r.run_id) / "config.json"))) is None]  # fmt: skip
    return {
        "runs": len(df),
        "outside_dense": len(outside),
        "stopped": int((df["status"] == "stopped").sum()),
        "failed": int((df["status"] == "failed").sum()),
        "step_ratio": round(_steps(out) / _steps(dense_dir), 3),
        "run_seconds": round(_run_seconds(out)),
        "grid_gaps": grid,
        "fit_gaps": fit,
        "moved": [k for k in grid if any(g[k] is None or g[k] > 0.25 + 1e-9 for g in (grid, fit))],
    }


def dense(name: str, root: Path) -> dict[str, Any]:
    """Train (or resume) the dense grid of ``name``; its runs, steps and wall time."""
    out = root / name / "dense"
    start = time.perf_counter()
    run_sweep(parse_spec(dense_table(name)), out, quiet=True)
    df = load_runs(out)
    return {"runs": len(df), "steps": _steps(out), "run_seconds": round(df["wall_time_s"].sum()),
            "wall_s_here": round(time.perf_counter() - start)}  # fmt: skip


def real(name: str, root: Path, margin: float, refine: str) -> dict[str, Any]:
    """The adaptive halving sweep trained for real; compared run by run with its replay."""
    out = root / name / f"real-{refine}-m{margin:g}"
    start = time.perf_counter()
    run_sweep(parse_spec(halving_table(name, margin, refine)), out, quiet=True)
    wall = time.perf_counter() - start
    replayed = root / name / f"replay-{refine}-m{margin:g}"
    a, b = (load_runs(d).set_index("run_id")[["status", "steps"]] for d in (out, replayed))
    same = a.sort_index().equals(b.sort_index())
    return {"runs": len(a), "steps": int(a["steps"].sum()), "wall_s": round(wall),
            "equals_replay": same}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dense grids and replays live here")
    parser.add_argument("--grids", default=",".join(GRIDS))
    parser.add_argument("--margins", default="0.02,0.05,0.1,0.2")
    parser.add_argument("--refines", default=",".join(REFINES), help="[sweep] refine values")
    parser.add_argument("--real", default="", help="grid to also sweep for real with halving")
    args = parser.parse_args(argv)
    root = Path(args.out)
    margins = [float(m) for m in args.margins.split(",")]
    refines = args.refines.split(",")
    result: dict[str, Any] = {}
    for name in args.grids.split(","):
        result[name] = {"dense": dense(name, root)}
        for refine in refines:
            result[name][f"adaptive_{refine}"] = replay(name, root, None, refine)
            for m in margins:
                result[name][f"halving_m{m:g}_{refine}"] = replay(name, root, m, refine)
        if name == args.real:
            result[name]["real"] = real(name, root, margins[0], refines[-1])
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # workers import replay_train by name
    print(json.dumps(main(), indent=1))
