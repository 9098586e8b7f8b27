"""``hptransfer repro NAME``: run a reproduction's specs into one directory, then analyse it.

The specs (``NAME.toml``, and ``NAME-PART.toml`` where a product grid cannot express the
reproduction) are package data under ``hptransfer/recipes/repro/``; they run into one results
directory, and the reproduction's analysis turns it into figures (``NAME.png``; for LR sweeps
also the loss-vs-LR panels ``NAME-sweep.png``) and numbers (``NAME.json``, printed as a
Markdown table). Specs of one reproduction sweep the same keys, so ``hptransfer report DIR``
reads the merged directory too. Re-running resumes (finished runs are skipped) and redoes the
analysis.

``smoke`` runs every spec at a reduced size (one seed, widths 16 and 32, depths 1 and 2, the
lowest and highest LR of each grid, a few steps, no adaptive search), in this process, so
that the whole pipeline is exercised in seconds; its numbers mean nothing. ``device="cuda"``
runs each spec's ``[gpu]`` version (larger widths, adaptive LR windows). The full-size
numbers, the papers' claims and the commands are in docs/reproductions.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from hptransfer.errors import ConfigError
from hptransfer.experiments.repro.registry import get
from hptransfer.experiments.repro.reproduction import Record, Reproduction
from hptransfer.recipes import recipe_path
from hptransfer.sweep.executors import Executor
from hptransfer.sweep.worker import RunTask, execute

if TYPE_CHECKING:
    import pandas as pd

RECIPES = recipe_path("repro")
"""The packaged specs; ``recipes=`` (``--recipes DIR``) points elsewhere."""
DEFAULT_ROOT = Path("hpt-results") / "repro"

SMOKE_BASE: dict[str, Any] = {
    "train.steps": 4,
    "train.warmup_steps": 1,
    "train.eval_every": 4,
    "train.eval_batches": 1,
    "train.batch_size": 4,
    "train.seq_len": 16,
    "model.head_dim": 8,
    "param.base_width": 16,
}
"""Base overrides of ``--smoke``: a few steps of a tiny model."""
SMOKE_GRID: dict[str, list[Any]] = {"model.width": [16, 32], "model.depth": [1, 2]}
"""Grid values of ``--smoke`` for the keys a spec sweeps (other keys keep every value)."""

# ---------------------------------------------------------------------------------------------
# Specs and runs


def spec_paths(repro: Reproduction, recipes: Path = RECIPES) -> list[Path]:
    """The spec files of ``repro``; ConfigError naming the first one that is missing."""
    paths = [recipes / name for name in repro.specs]
    for path in paths:
        if not path.is_file():
            raise ConfigError(
                f"no reproduction spec {path}: pass the directory of the specs (--recipes DIR)"
            )
    return paths


def smoke_table(table: dict[str, Any]) -> dict[str, Any]:
    """A spec's TOML tables shrunk to a smoke run: SMOKE_BASE on top of its base, one seed,
    the swept widths and depths replaced by SMOKE_GRID (in the grid, or in the first cases
    that set them: one case per smoke value), every LR grid cut to its lowest and highest LR,
    alignment probes every 2 steps if on, no adaptive search, fixed steps."""
    from hptransfer.config import flatten
    from hptransfer.sweep.spec import LR_KEY, parse_cases, parse_grid

    base = {**flatten(table.get("base", {})), **SMOKE_BASE}
    if base.get("train.align_every"):
        base["train.align_every"] = 2
    if base.get("param.depth_base"):
        base["param.depth_base"] = 1
    grid = parse_grid(table.get("grid", {}))
    for key, values in SMOKE_GRID.items():
        if key in grid:
            grid[key] = list(values)
    if "seed" in grid:
        grid["seed"] = grid["seed"][:1]
    if LR_KEY in grid:
        grid[LR_KEY] = sorted({min(grid[LR_KEY]), max(grid[LR_KEY])})
    out = {**table, "base": base, "grid": grid}
    if "cases" in table:
        cases = [dict(c) for c in parse_cases(table["cases"], grid)]
        for key, values in SMOKE_GRID.items():
            if any(key in c for c in cases):
                cases = [{**c, key: v} for c, v in zip([c for c in cases if key in c], values)]
        for case in cases:
            if LR_KEY in case:
                case[LR_KEY] = sorted({min(case[LR_KEY]), max(case[LR_KEY])})
        out["cases"] = cases
    sweep = {**table.get("sweep", {}), "adaptive": False, "workers": 1, "tokens_per_param": 0}
    return {**out, "sweep": sweep}


def device_table(table: dict[str, Any], device: str, where: Path) -> dict[str, Any]:
    """A spec's TOML tables for ``device``: without its ``[gpu]`` table on the CPU; on cuda
    that table laid over the spec (its base, grid and sweep keys replace the spec's, its
    ``[[gpu.cases]]`` replace the cases) and ``train.device = "cuda"``. ConfigError naming the
    spec when a cuda run asks for a spec that has no [gpu] table."""
    gpu = table.get("gpu")
    out = {k: v for k, v in table.items() if k != "gpu"}
    if device == "cpu":
        return out
    if not isinstance(gpu, dict):
        raise ConfigError(f"{where}: no [gpu] table, so no --device {device} version")
    for name in ("base", "grid", "sweep"):
        out[name] = _merged(out.get(name, {}), gpu.get(name, {}))
    out["base"] = _merged(out["base"], {"train": {"device": device}})
    if "cases" in gpu:
        out["cases"] = gpu["cases"]
    return out


def _merged(table: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Nested TOML tables ``table`` with ``over``'s values laid on top, key by key (an LR
    range {min, max, step} is replaced whole)."""
    out = dict(table)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and "min" not in value:
            out[key] = _merged(old, value)
        else:
            out[key] = value
    return out


def load_specs(
    repro: Reproduction, recipes: Path = RECIPES, smoke: bool = False,
    workers: int | None = None, device: str = "cpu", root: Path | None = None,
) -> list:  # fmt: skip
    """The parsed SweepSpecs of ``repro`` (for ``device``: see :func:`device_table`; shrunk
    with ``smoke``; ``workers`` overrides the spec's; then the reproduction's ``prepare``
    step, given the results directory ``root``, e.g. e_constants' tuning)."""
    from hptransfer.config import read_toml
    from hptransfer.sweep.spec import parse_spec

    specs = []
    for path in spec_paths(repro, recipes):
        table = device_table(read_toml(path), device, path)
        if smoke:
            table = smoke_table(table)
        if workers is not None:
            table = {**table, "sweep": {**table.get("sweep", {}), "workers": workers}}
        if repro.prepare is not None:
            table = repro.prepare(table, root, smoke)
        specs.append(parse_spec(table, relative_to=path.parent, text=path.read_text()))
    return specs


class InlineExecutor(Executor):
    """Runs each task in this process as it is submitted (on the task's torch threads). Smoke
    runs take a fraction of a second, less than starting a worker process (which imports torch)."""

    workers = 1

    def __init__(self) -> None:
        self._done: list[tuple[RunTask, Record]] = []

    def submit(self, task: RunTask) -> None:
        self._done.append((task, execute(task)))

    def wait(self, timeout: float) -> list[tuple[RunTask, Record]]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        self._done.clear()


def default_out(name: str, smoke: bool = False) -> Path:
    return DEFAULT_ROOT / (f"{name}-smoke" if smoke else name)


def run_reproduction(
    name: str,
    out: str | Path | None = None,
    *,
    smoke: bool = False,
    workers: int | None = None,
    recipes: Path = RECIPES,
    quiet: bool = False,
    stream: TextIO | None = None,
    analyse_only: bool = False,
    device: str = "cpu",
) -> Record:
    """Run (or resume) every spec of reproduction ``name`` into one directory, analyse it and
    print the numbers as Markdown; return them. The specs share one executor (one pool).
    Then the reproduction's ``measure`` step, if any. ``analyse_only`` skips the runs and the
    measurement and analyses what the directory holds; ``device="cuda"``
    runs each spec's [gpu] version (see :func:`device_table`)."""
    from hptransfer.sweep.executors import make_executor
    from hptransfer.sweep.runner import run_sweep

    repro = get(name)
    stream = stream if stream is not None else sys.stdout
    root = Path(out) if out is not None else default_out(name, smoke)
    if analyse_only:
        if not (root / "runs").is_dir():
            raise ConfigError(f"--analyse-only: no runs in {root}")
    else:
        specs = load_specs(repro, recipes, smoke, workers, device, root)
        settings = specs[0].settings
        executor: Executor = (
            InlineExecutor()
            if smoke
            else make_executor(settings.executor, settings.workers, settings.address)
        )
        failed = 0
        try:
            for spec, file in zip(specs, repro.specs, strict=True):  # each keeps its own copy
                counts = run_sweep(
                    spec, root, quiet=quiet, executor=executor, spec_copy=Path(file).name
                )
                failed += counts.failed
        finally:
            executor.close()
        if failed:
            raise ConfigError(f"{failed} run(s) failed; see {root}/runs/*/summary.json")
        if repro.measure is not None:
            repro.measure(repro, load_results(repro, root), root)
    numbers = analyse(repro, load_results(repro, root), root)
    stream.write(markdown(repro, numbers))
    return numbers


def load_results(repro: Reproduction, root: Path) -> pd.DataFrame:
    """The finished runs of ``root`` (load_runs) with the setting columns (``repro.by`` and x)
    read from each run's config: DIR/sweep.json lists only the last spec's runs and keys, so
    the configs on disk are what counts."""
    from hptransfer.store import load_runs

    columns = [k for k in (*repro.by, repro.x_key) if k not in ("parameterization", "optimizer")]
    df = load_runs(root, columns=columns)
    return df[df["status"].isin(["ok", "diverged", "failed"])].reset_index(drop=True)


def analyse(repro: Reproduction, df: pd.DataFrame, root: str | Path) -> Record:
    """Figures and numbers of ``repro`` from its results (Agg backend, nothing shown)."""
    import matplotlib

    matplotlib.use("Agg")
    return repro.analyse(repro, df, Path(root))


def markdown(repro: Reproduction, numbers: Record) -> str:
    """The numbers as Markdown: the claim, the table, the figure paths."""
    lines = [f"\n{repro.name} ([{repro.paper}]): {repro.claim}\n", *numbers["table"], ""]
    lines += [f"figure: {p}" for p in numbers["figures"]]
    return "\n".join(lines) + "\n"
