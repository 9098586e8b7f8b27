"""Coordinate check: per-layer activation sizes measured while training, across widths.

coord_check: the activation RMS of every layer with parameters (and the logits) over the first
k steps, at several widths. A parameterization that transfers keeps these sizes width-free
(log-log slope against width near 0); one that does not shows them growing with width.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from hptransfer import data as data_mod
from hptransfer.assemble import build, loss_fn
from hptransfer.config import RunConfig


def _rms_hook(records: list, layer: str, width: int, step_ref: list[int | None]):
    def hook(module, args, output):
        if step_ref[0] is None:  # a forward pass that is not a training step
            return
        out = output[0] if isinstance(output, tuple) else output
        rms = out.detach().float().pow(2).mean().sqrt().item()
        records.append({"layer": layer, "width": width, "step": step_ref[0], "rms": rms})

    return hook


def coord_check(
    cfg: RunConfig, widths: Sequence[int], steps: int = 5, seeds: Sequence[int] = (0,)
) -> pd.DataFrame:
    """Activation RMS per layer, width and step (steps 0 .. steps-1, measured in the forward
    pass before that step's update), with the LR held constant at ``cfg.optimizer.lr``.

    Returns a tidy frame with columns layer, width, step, rms, seed. Layers are the modules
    that own parameters directly (embeddings, linear layers, norms), named as in the model.
    """
    corpus = data_mod.load_corpus(cfg.data)
    records: list[dict] = []
    for seed in seeds:
        for width in widths:
            run_cfg = cfg.replace(**{"model.width": int(width), "seed": int(seed)}).validate()
            s = build(run_cfg, corpus)
            step_ref: list[int | None] = [0]
            seed_records: list[dict] = []
            handles = [
                module.register_forward_hook(_rms_hook(seed_records, name, width, step_ref))
                for name, module in s.model.named_modules()
                if name
                and any(True for _ in module.parameters(recurse=False))
                and not isinstance(module, nn.ModuleList)
            ]
            batches = data_mod.Batches(
                corpus.train, run_cfg.train.batch_size, run_cfg.train.seq_len, seed
            )
            autocast = run_cfg.train.dtype == "bfloat16"
            refresh = getattr(s.optimizer, "refresh_curvature", None)  # Sophia, as in train
            curvature_interval: int = getattr(s.optimizer, "curvature_interval", 1)
            for step in range(steps):
                x, y = batches.get(step)
                if refresh is not None and step % curvature_interval == 0:
                    step_ref[0] = None
                    refresh(lambda x=x, model=s.model: model(x), y)
                step_ref[0] = step
                loss = loss_fn(s.model, x, y, autocast)
                s.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                s.optimizer.step()
            for h in handles:
                h.remove()
            s.parameterization.remove()
            for r in seed_records:
                r["seed"] = seed
            records += seed_records
    torch.set_grad_enabled(True)
    return pd.DataFrame.from_records(records, columns=["layer", "width", "step", "rms", "seed"])
