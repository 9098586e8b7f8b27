r"""ADOPT (Taniguchi et al. 2024), clipped version.

The first step only initializes the second moment; each later step normalizes the gradient by
the *previous* second moment, clips it, and then updates the moments:

.. math::

    t = 0:&\quad v_0 = g_0^2 \quad\text{(no update)} \\
    t \ge 1:&\quad \hat g_t = \operatorname{clip}\big(g_t / \max(\sqrt{v_{t-1}}, \epsilon),
        \ -t^{c},\ t^{c}\big) \\
    &\quad m_t = \beta_1 m_{t-1} + (1-\beta_1)\hat g_t, \qquad w_t = w_{t-1} - \eta\, m_t \\
    &\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

with ``t`` the update index (1 at the first update, i.e. the number of previous calls), ``c``
= ``clip_exponent`` (0.25, as in the paper and the official code ``iShohei220/adopt``;
``None`` disables clipping). pytorch_optimizer's ``ADOPT`` uses the call count (one more) by
default; the parity test passes it ``clip_lambda=lambda s: (s - 1) ** 0.25``.
Defaults: lr 1e-3, betas (0.9, 0.9999), eps 1e-6 (100x Adam's: scale it like Adam's epsilon).

Weight decay: a shrink before the update on update steps only (nothing happens on the
initialization step, as in the official code): coupled ``w *= 1 - lr * wd`` or independent
``w *= 1 - wd * lr / initial_lr`` (see :mod:`hptransfer.optim`).

Reference: Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta_2 with the Optimal
Rate", NeurIPS 2024, arXiv:2411.02853.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from hptransfer.optim import apply_decay, foreach_chunks


class ADOPT(torch.optim.Optimizer):
    """Clipped ADOPT. Per-group keys: lr, betas, eps, clip_exponent, weight_decay."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.9999),
        eps: float = 1e-6,
        clip_exponent: float | None = 0.25,
        weight_decay: float = 0.0,
        wd_mode: str = "coupled",
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            clip_exponent=clip_exponent,
            weight_decay=weight_decay,
            wd_mode=wd_mode,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            fresh, params, grads, states = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                    fresh.append(p)
                else:
                    params.append(p)
                    grads.append(p.grad)
                    states.append(st)
            if fresh:
                fresh_grads = [p.grad for p in fresh]
                fresh_vs = [self.state[p]["exp_avg_sq"] for p in fresh]
                torch._foreach_addcmul_(fresh_vs, fresh_grads, fresh_grads)
                for p in fresh:
                    self.state[p]["step"] = 1
            if not params:
                continue
            for sl in foreach_chunks(params):
                self._update(group, params[sl], grads[sl], states[sl])
        return loss

    @staticmethod
    def _update(
        group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict]
    ) -> None:
        beta1, beta2 = group["betas"]
        ms = [st["exp_avg"] for st in states]
        vs = [st["exp_avg_sq"] for st in states]
        denom = torch._foreach_sqrt(vs)
        torch._foreach_clamp_min_(denom, group["eps"])
        normed = torch._foreach_div(grads, denom)
        if group["clip_exponent"] is not None:
            clips = [float(st["step"]) ** group["clip_exponent"] for st in states]
            torch._foreach_clamp_min_(normed, [-c for c in clips])
            torch._foreach_clamp_max_(normed, clips)
        torch._foreach_lerp_(ms, normed, 1.0 - beta1)
        apply_decay(group, params)
        torch._foreach_add_(params, ms, alpha=-group["lr"])
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, 1.0 - beta2)
        for st in states:
            st["step"] += 1
