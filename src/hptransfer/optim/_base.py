"""The step skeleton shared by the in-house optimizers; each subclass keeps only its rule.

:meth:`InHouseOptimizer.step` evaluates the closure, and for every param group gathers the
parameters that have a gradient, creates their state on first use (``"step"`` = 0 and one
zero buffer per name in ``buffers``) and calls :meth:`~InHouseOptimizer._step_group`. The
default ``_step_group`` counts the step and calls the update rule :meth:`_update` on chunks of
tensors sized for ``torch._foreach_*`` ops (:func:`foreach_chunks`). Weight decay stays in
the rule, through :func:`hptransfer.optim.decay.apply_decay` (coupled or independent), because
where it happens relative to the rule's own reads of the weights is part of the rule.
:func:`update_moments` and :func:`sqrt_v_hat` are the Adam pieces several rules share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

State = dict[str, Any]

#: elements per CPU foreach chunk: the update's half-dozen tensors of a chunk stay in L2 cache
CPU_CHUNK_NUMEL = 1 << 16


def foreach_chunks(params: list[Tensor]) -> list[slice]:
    """Slices of ``params`` to update together with ``torch._foreach_*`` ops.

    One chunk on accelerators (fewer kernel launches). On CPU, where foreach ops are plain
    loops, consecutive tensors up to CPU_CHUNK_NUMEL elements in all (a larger tensor alone):
    going tensor by tensor keeps each in cache across the update's ops (measured ~1.7x faster
    than one chunk at width 512), and grouping small tensors saves per-op overhead (LAMB at
    width 128: 1.16x -> ~0.9x the reference's step time).
    """
    if not params or params[0].device.type != "cpu":
        return [slice(None)]
    out, start, size = [], 0, 0
    for i, p in enumerate(params):
        if i > start and size + p.numel() > CPU_CHUNK_NUMEL:
            out.append(slice(start, i))
            start, size = i, 0
        size += p.numel()
    out.append(slice(start, len(params)))
    return out


class InHouseOptimizer(torch.optim.Optimizer):
    """Base class: subclasses set ``buffers`` and implement :meth:`_update` (or override
    :meth:`_step_group` when the rule is not elementwise)."""

    buffers: tuple[str, ...] = ()
    """Names of the zero-initialized, parameter-shaped state buffers."""

    def _state(self, p: Tensor) -> State:
        """The state of ``p``, created on first use."""
        st: State = self.state[p]
        if not st:
            st["step"] = 0
            for name in self.buffers:
                st[name] = torch.zeros_like(p)
        return st

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                grads = [p.grad for p in params]
                self._step_group(group, params, grads, [self._state(p) for p in params])
        return loss

    def _step_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        """Count the step, then apply the rule chunk by chunk."""
        for st in states:
            st["step"] += 1
        for sl in foreach_chunks(params):
            self._update(group, params[sl], grads[sl], states[sl])

    def _update(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        """The update rule on one chunk (``states[i]["step"]`` already counts this step)."""
        raise NotImplementedError


def update_moments(
    states: list[State], grads: list[Tensor], betas: tuple[float, float]
) -> tuple[list[Tensor], list[Tensor]]:
    """Adam's moments in place: ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``; returns
    the lists ``(m, v)`` (state keys ``exp_avg``, ``exp_avg_sq``)."""
    beta1, beta2 = betas
    ms = [st["exp_avg"] for st in states]
    vs = [st["exp_avg_sq"] for st in states]
    torch._foreach_lerp_(ms, grads, 1.0 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, 1.0 - beta2)
    return ms, vs


def sqrt_v_hat(
    vs: list[Tensor], states: list[State], beta2: float, scale: float = 1.0
) -> tuple[Tensor, ...]:
    """New tensors ``sqrt(scale * v / (1 - b2^t))``: the bias-corrected RMS of the gradient."""
    out = torch._foreach_mul(vs, [scale / (1.0 - beta2 ** st["step"]) for st in states])
    torch._foreach_sqrt_(out)
    return out
