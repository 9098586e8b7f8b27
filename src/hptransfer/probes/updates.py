"""Relative update size per layer, logged by train at eval steps (``update/NAME``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hptransfer import distributed


@torch.no_grad()
def update_ratios(
    named: Mapping[str, torch.Tensor], before: list[torch.Tensor]
) -> dict[str, float]:
    """Per layer: RMS of this step's update divided by RMS of the weight ("update/NAME").

    ``named`` maps names to the weights after the step, ``before`` holds copies of them taken
    before it, in the same order: ratio = ||W - W_before|| / ||W|| (the sqrt(numel) of the two
    RMS cancel). Sharded (FSDP2) weights are gathered first.
    """
    names = list(named)
    after = list(named.values())
    deltas = torch._foreach_sub(after, before)
    upd = distributed.full(torch.stack(torch._foreach_norm(deltas))).double()  # fsdp: DTensors
    wts = distributed.full(torch.stack(torch._foreach_norm(after))).double().clamp_min(1e-30)
    ratios = (upd / wts).tolist()
    return {f"update/{n}": r for n, r in zip(names, ratios)}
