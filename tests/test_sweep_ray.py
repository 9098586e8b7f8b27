"""A small sweep on a local Ray instance (skipped when Ray is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sweep import SPEC, write_spec

from hptransfer import store
from hptransfer.sweep import load_spec, run_sweep

pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_executor_runs_a_sweep_and_resumes(tmp_path: Path) -> None:
    """The spec of the local-executor tests, real training, on Ray workers."""
    spec = load_spec(write_spec(tmp_path, SPEC), settings={"executor": "ray"})
    counts = run_sweep(spec, tmp_path / "out", quiet=True)
    assert (counts.done + counts.diverged, counts.failed) == (8, 0)
    df = store.load_runs(tmp_path / "out", errors="raise")
    assert len(df) == 8 and set(df["status"]) <= {"ok", "diverged"}
    env = store.read_json(tmp_path / "out" / "runs" / df["run_id"][0] / "env.json")
    assert env["torch_version"]
    assert run_sweep(spec, tmp_path / "out", quiet=True).skipped == 8
