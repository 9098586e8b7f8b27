"""Weight decay in the package's two modes, shared by every optimizer.

* ``wd_mode="coupled"``: each step shrinks ``w *= 1 - lr * wd`` with the group's current lr
  (PyTorch AdamW style), so a per-layer LR factor also scales the decay.
* ``wd_mode="independent"``: each step shrinks ``w *= 1 - wd * lr / initial_lr``: it follows the
  LR schedule but not the per-layer LR factor. ``initial_lr`` is written into each group by
  torch LR schedulers; without one the ratio is 1.

The in-house optimizers call :func:`apply_decay` inside their rule; torch-provided ones are
wrapped by :func:`step_with_independent_decay`, which applies the independent shrink just
before torch's step (torch's own decay is disabled for that step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def decay_amount(group: dict[str, Any]) -> float:
    """The fraction ``s`` by which one step shrinks the group's weights (``w *= 1 - s``)."""
    wd: float = group.get("weight_decay", 0.0)
    if not wd:
        return 0.0
    lr: float = group["lr"]
    if group.get("wd_mode", "coupled") == "coupled":
        return lr * wd
    initial_lr: float = group.get("initial_lr", lr)
    return wd * lr / initial_lr


def apply_decay(group: dict[str, Any], params: list[Tensor]) -> None:
    """Shrink ``params`` by the group's decay amount (no-op when it is zero)."""
    s = decay_amount(group)
    if s and params:
        torch._foreach_mul_(params, 1.0 - s)


def step_with_independent_decay(
    optimizer: torch.optim.Optimizer,
    inner_step: Callable[[], Any],
    closure: Callable[[], Any] | None,
) -> Any:
    """Run ``inner_step`` (a torch optimizer's step) with this package's decay convention.

    Groups in ``"independent"`` mode get their shrink here, and torch's own ``weight_decay`` is
    set to 0 for the duration of ``inner_step``; ``"coupled"`` groups are left to torch.
    """
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    saved: list[tuple[dict[str, Any], float]] = []
    with torch.no_grad():
        for group in optimizer.param_groups:
            if group.get("wd_mode", "coupled") == "independent" and group["weight_decay"]:
                apply_decay(group, [p for p in group["params"] if p.grad is not None])
                saved.append((group, group["weight_decay"]))
                group["weight_decay"] = 0.0
    try:
        inner_step()
    finally:
        for group, wd in saved:
            group["weight_decay"] = wd
    return loss
