"""Sophia-G and Shampoo train nanodo for 100 steps on the default corpus (issue 3 acceptance):
no divergence at a sensible LR, and the final eval loss is well below the step-0 eval loss."""

from __future__ import annotations

import pytest

from hptransfer.assemble import build
from hptransfer.config import RunConfig
from hptransfer.train import evaluate, train

BASE = {
    "model.width": 64,
    "model.depth": 2,
    "model.head_dim": 16,
    "train.batch_size": 8,
    "train.seq_len": 32,
    "train.steps": 100,
    "train.eval_every": 50,
    "train.eval_batches": 4,
}


@pytest.mark.parametrize(
    "name,lr,knobs",
    [
        ("sophia", 3e-3, {"variant": "g"}),  # Hessian refresh every 10 steps (the trainer's)
        ("shampoo", 3e-2, {}),  # default: relative eps 1e-6, roots every 10 steps after 10
    ],
)
def test_trains_100_steps_and_lowers_the_eval_loss(
    name: str, lr: float, knobs: dict[str, object]
) -> None:
    cfg = RunConfig().replace(
        **{**BASE, "optimizer.name": name, "optimizer.lr": lr, "optimizer.options": knobs}
    )
    cfg = cfg.validate()
    s = build(cfg)  # the run's own model at step 0 (train builds it with the same seed)
    loss0 = evaluate(s.model, s.eval_set, s.loss)
    s.parameterization.remove()

    summary = train(cfg)
    assert summary["status"] == "ok" and summary["steps"] == 100
    assert summary["final_eval_loss"] < loss0 - 1.0, (loss0, summary["final_eval_loss"])
