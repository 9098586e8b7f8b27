"""Per-role LR constants by random search at the base width.

[E] tuned one constant gamma per role (input, hidden, output) by random search, 800 trials,
each gamma log-uniform in [1e-2, 1e2], at the base width; the tuned constants then transfer to
every width with the parameterization's exponents. :func:`tune_constants` does the same: each
trial is a run in a results store (so a tune resumes like a sweep), and the best constants are
written into a recipe TOML (``param.gamma_*``) that later sweeps use via ``recipe = "..."``.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from hptransfer.config import ConfigError, RunConfig
from hptransfer.sweep.spec import Run, SweepSettings, SweepSpec

GAMMA_KEYS = ("param.gamma_input", "param.gamma_hidden", "param.gamma_output")
GAMMA_RANGE = (1e-2, 1e2)


def sample_constants(
    n_trials: int, seed: int = 0, low: float = GAMMA_RANGE[0], high: float = GAMMA_RANGE[1]
) -> list[dict[str, float]]:
    """``n_trials`` draws of every gamma, log-uniform in [low, high], reproducible by seed.

    Rounded to 6 significant digits so the recipe and the run ids read cleanly.
    """
    if n_trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {n_trials}")
    if not 0 < low < high:
        raise ConfigError(f"gamma range must satisfy 0 < low < high, got [{low}, {high}]")
    rng = random.Random(seed)
    span = math.log(high) - math.log(low)
    return [
        {k: float(f"{math.exp(math.log(low) + span * rng.random()):.6g}") for k in GAMMA_KEYS}
        for _ in range(n_trials)
    ]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"cannot write {value!r} as TOML")


def recipe_text(cfg: RunConfig, header: str = "") -> str:
    """A recipe TOML for ``cfg`` that :func:`hptransfer.config.load_recipe` reads back equal."""
    data = cfg.to_dict()
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append(f"seed = {data.pop('seed')}")
    for section, table in data.items():
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def _base_and_settings(spec_or_cfg: SweepSpec | RunConfig) -> tuple[RunConfig, SweepSettings]:
    if isinstance(spec_or_cfg, SweepSpec):
        return spec_or_cfg.base, spec_or_cfg.settings
    return spec_or_cfg, SweepSettings()


def tune_constants(
    spec_or_base_cfg: SweepSpec | RunConfig,
    n_trials: int,
    out_dir: str | Path,
    *,
    recipe_out: str | Path | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Random search over gamma_input / gamma_hidden / gamma_output at the base width.

    The base config (a sweep spec's ``[base]``, or a RunConfig) is trained at
    ``model.width = param.base_width`` once per trial; trials are runs in ``out_dir``. Returns
    {"best": {key: gamma}, "loss": best final eval loss, "run_id": ..., "trials": n, "ok": n
    usable}, and writes the tuned recipe to ``recipe_out`` when given.
    """
    from hptransfer.store import load_runs, write_text
    from hptransfer.sweep.runner import run_sweep

    base, settings = _base_and_settings(spec_or_base_cfg)
    base = base.replace(**{"model.width": base.param.base_width}).validate()
    runs = [Run(base.replace(**c), c) for c in sample_constants(n_trials, seed)]
    spec = SweepSpec(base=base, grid={}, settings=settings)
    run_sweep(spec, out_dir, quiet=quiet, runs=runs)
    df = load_runs(out_dir)
    df = df[df["run_id"].isin({r.run_id for r in runs}) & (df["status"] == "ok")]
    df = df[df["final_eval_loss"].notna()]
    if df.empty:
        raise ConfigError(f"no usable trial among {n_trials} in {out_dir}; widen the LR or range")
    row = df.loc[df["final_eval_loss"].idxmin()]
    best_run = next(r for r in runs if r.run_id == row["run_id"])
    result = {
        "best": dict(best_run.values), "loss": float(row["final_eval_loss"]),
        "run_id": best_run.run_id, "trials": n_trials, "ok": len(df),
    }  # fmt: skip
    if recipe_out is not None:
        header = (
            f"Tuned by `hptransfer tune`: best of {n_trials} random-search trials "
            f"(gamma log-uniform in [{GAMMA_RANGE[0]}, {GAMMA_RANGE[1]}], seed {seed}) at width "
            f"{base.model.width}; final eval loss {result['loss']:.4f} (run {best_run.run_id})."
        )
        write_text(recipe_out, recipe_text(best_run.config, header))
    return result
