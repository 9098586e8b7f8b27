"""A small sweep on a local Ray instance (skipped when Ray is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hptransfer import store
from hptransfer.sweep import load_spec, run_sweep

pytest.importorskip("ray")

SPEC = """
[base]
model.width = 32
model.depth = 1
model.head_dim = 16
train.steps = 10
train.batch_size = 4
train.seq_len = 32
train.eval_every = 10
train.eval_batches = 1

[grid]
param.name = ["mup", "sp"]
lr = [0.001, 0.01]

[sweep]
executor = "ray"
workers = 2
"""


@pytest.mark.slow
def test_ray_executor_runs_a_sweep_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    spec = load_spec(path)
    counts = run_sweep(spec, tmp_path / "out", quiet=True)
    assert (counts.done + counts.diverged, counts.failed) == (4, 0)
    df = store.load_runs(tmp_path / "out", errors="raise")
    assert len(df) == 4 and set(df["status"]) <= {"ok", "diverged"}
    env = store.read_json(tmp_path / "out" / "runs" / df["run_id"][0] / "env.json")
    assert env["torch_version"]
    assert run_sweep(spec, tmp_path / "out", quiet=True).skipped == 4
