"""Coordinate check: per-layer activation sizes measured while training, across widths.

The activation RMS of every module that owns parameters (and the logits) over the first k
steps, at several widths. A parameterization that transfers keeps these sizes width-free
(log-log slope against width near 0); one that does not shows them growing with width.

`measure` records one model's sizes. ``coord_check_config(cfg, widths)`` measures the run a
config describes (built-in model or model.factory), built exactly as ``train`` builds it
(``hptransfer coord-check``); `hptransfer.analysis.coord.coord_check` measures any model from
Python and adds the slopes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from hptransfer.assemble import builds
from hptransfer.config import RunConfig

COLUMNS = ["layer", "width", "step", "rms", "seed"]


class _RmsHook:
    """Forward hook appending the output's RMS to ``records`` while ``step[0]`` is a step."""

    def __init__(self, records: list[dict], layer: str, width: int, step: list[int | None]):
        self.records, self.layer, self.width, self.step = records, layer, width, step

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.step[0] is None:  # a forward pass that is not a training step
            return
        out = output[0] if isinstance(output, tuple) else output
        out = getattr(out, "logits", out)
        if not isinstance(out, torch.Tensor):
            return
        rms = out.detach().float().pow(2).mean().sqrt().item()
        self.records.append(
            {"layer": self.layer, "width": self.width, "step": self.step[0], "rms": rms}
        )


def measure(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: Callable[[nn.Module, Any], torch.Tensor],
    batch_at: Callable[[int], Any],
    steps: int,
    width: int,
    before_step: Callable[[int, Any], None] | None = None,
) -> list[dict]:
    """Train ``steps`` steps at a constant LR, recording every parameter-owning module's output
    RMS in each step's forward pass (before that step's update)."""
    records: list[dict] = []
    step_ref: list[int | None] = [None]
    handles = [
        module.register_forward_hook(_RmsHook(records, name, width, step_ref))
        for name, module in model.named_modules()
        if name
        and any(True for _ in module.parameters(recurse=False))
        and not isinstance(module, nn.ModuleList)
    ]
    try:
        for step in range(steps):
            batch = batch_at(step)
            if before_step is not None:
                step_ref[0] = None
                before_step(step, batch)
            step_ref[0] = step
            value = loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
    finally:
        for h in handles:
            h.remove()
    return records


def coord_check_config(
    cfg: RunConfig, widths: Sequence[int], steps: int = 5, seeds: Sequence[int] = (0,)
) -> pd.DataFrame:
    """Activation RMS per layer, width and step of ``cfg``'s run (steps 0 .. steps-1, measured
    in the forward pass before that step's update), with the LR held constant at
    ``cfg.optimizer.lr``; model, loss and batches as ``train`` builds them.

    Returns a tidy frame with columns layer, width, step, rms, seed.
    """
    records: list[dict] = []
    for run_cfg, s in builds(cfg, widths, seeds):
        refresh = getattr(s.optimizer, "refresh_curvature", None)  # Sophia, as in train
        interval: int = getattr(s.optimizer, "curvature_interval", 1)

        def before_step(
            step: int, batch: Any, s: Any = s, refresh: Any = refresh, every: int = interval
        ) -> None:
            if refresh is not None and step % every == 0:
                refresh(lambda: s.model(batch[0]), batch[1])

        def loss(model: nn.Module, batch: Any, s: Any = s) -> torch.Tensor:
            return s.loss(model, *batch)

        width = run_cfg.model.width
        rows = measure(s.model, s.optimizer, loss, s.batches.get, steps, width, before_step)
        records += [{**r, "seed": run_cfg.seed} for r in rows]
    torch.set_grad_enabled(True)
    return pd.DataFrame.from_records(records, columns=COLUMNS)
