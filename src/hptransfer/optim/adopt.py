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

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from hptransfer.optim._base import InHouseOptimizer, State
from hptransfer.optim.decay import apply_decay
from hptransfer.optim.diagnostics import underflow_raw
from hptransfer.optim.registry import OptimizerSpec, family, signature_knobs


class ADOPT(InHouseOptimizer):
    """Clipped ADOPT. Per-group keys: lr, betas, eps, clip_exponent, weight_decay."""

    buffers = ("exp_avg", "exp_avg_sq")

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

    def _step_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        """A parameter's first call only sets ``v = g^2``; its later calls update."""
        new = [st["step"] == 0 for st in states]
        if any(new):
            new_grads = [g for g, n in zip(grads, new) if n]
            new_vs = [st["exp_avg_sq"] for st, n in zip(states, new) if n]
            torch._foreach_addcmul_(new_vs, new_grads, new_grads)
        old = [i for i, n in enumerate(new) if not n]
        if old:
            super()._step_group(
                group, [params[i] for i in old], [grads[i] for i in old], [states[i] for i in old]
            )
        for st, n in zip(states, new):
            if n:
                st["step"] = 1

    def _update(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        beta1, beta2 = group["betas"]
        ms = [st["exp_avg"] for st in states]
        vs = [st["exp_avg_sq"] for st in states]
        denom = torch._foreach_sqrt(vs)
        torch._foreach_clamp_min_(denom, group["eps"])
        normed = torch._foreach_div(grads, denom)
        if group["clip_exponent"] is not None:
            # the t-th update (call t + 1) clips at t^c
            clips = [float(st["step"] - 1) ** group["clip_exponent"] for st in states]
            torch._foreach_clamp_min_(normed, [-c for c in clips])
            torch._foreach_clamp_max_(normed, clips)
        torch._foreach_lerp_(ms, normed, 1.0 - beta1)
        apply_decay(group, params)
        torch._foreach_add_(params, ms, alpha=-group["lr"])
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, 1.0 - beta2)


_KNOBS = signature_knobs(ADOPT)
SPEC = OptimizerSpec(
    name="adopt",
    factory=lambda groups, cfg: ADOPT(groups, **cfg),
    knobs=_KNOBS,
    regime=family("adam"),
    eps=_KNOBS["eps"],
    diagnostics=(underflow_raw,),
)
