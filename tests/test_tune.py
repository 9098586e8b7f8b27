"""Per-role constants: random search trials in a store, best written as a recipe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hptransfer.config import ConfigError, RunConfig, load_recipe
from hptransfer.experiments.tune import GAMMA_KEYS, recipe_text, sample_constants, tune_constants
from hptransfer.store import load_runs

TESTS = Path(__file__).parent


def test_samples_are_log_uniform_in_range_and_reproducible() -> None:
    a = sample_constants(400, seed=1)
    assert a == sample_constants(400, seed=1) and a != sample_constants(400, seed=2)
    values = [t[k] for t in a for k in GAMMA_KEYS]
    assert min(values) >= 1e-2 and max(values) <= 1e2
    below_one = sum(v < 1 for v in values) / len(values)
    assert 0.45 < below_one < 0.55  # log-uniform: half the mass below the geometric middle
    with pytest.raises(ConfigError):
        sample_constants(0)


def test_recipe_text_round_trips(tmp_path: Path) -> None:
    cfg = RunConfig().replace(
        **{
            "param.gamma_hidden": 0.25,
            "param.overrides": {"head*": "output"},
            "optimizer.betas": [0.9, 0.95],
            "model.width": 96,
        }
    )
    path = tmp_path / "r.toml"
    path.write_text(recipe_text(cfg, "a header\nover two lines"))
    assert load_recipe(path) == cfg


def test_tune_writes_the_best_trial_as_a_recipe(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HPTRANSFER_TRAIN_FN", "test_sweep_fakes:gamma_train")
    monkeypatch.setenv("FAKE_TRAIN_S", "0.0")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    base = RunConfig().replace(**{"model.width": 128, "param.base_width": 32})
    out = tmp_path / "recipe.toml"
    result = tune_constants(base, 6, tmp_path / "trials", recipe_out=out, quiet=True)
    df = load_runs(tmp_path / "trials")
    assert len(df) == 6 and set(df["width"]) == {32}  # trained at the base width
    assert result["loss"] == df["final_eval_loss"].min()
    tuned = load_recipe(out)
    assert {k: getattr(tuned.param, k.split(".")[1]) for k in GAMMA_KEYS} == result["best"]
    assert tuned.model.width == 32 and tuned.run_id() == result["run_id"]
