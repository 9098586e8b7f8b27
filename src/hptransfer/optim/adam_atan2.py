r"""Adam-atan2: Adam with the epsilon-division replaced by ``atan2``.

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t) \\
    w_t &= w_{t-1} - \eta\, a \operatorname{atan2}\big(\hat m_t,\; b \sqrt{\hat v_t}\big)

There is no epsilon: the step is exactly invariant to a rescaling of the gradient, a zero
gradient gives a zero step, and the step is bounded by ``eta * a * pi / 2``. Defaults: betas
(0.9, 0.95) (the reference's default is (0.9, 0.99)), ``a`` = 1.27 (about 4/pi, so that
``a * atan2(x, 1)`` is close to ``x`` for small ``x``), ``b`` = 1. ``a = b = 1`` is the other
setting used in public readings of [E]; pass it explicitly.

Weight decay is a multiplicative shrink applied before the update (see
:mod:`hptransfer.optim`): coupled ``w *= 1 - lr * wd`` (the reference's default form) or
independent ``w *= 1 - wd * lr / initial_lr``.

Reference: Everett et al. 2024, "Scaling Exponents Across Parameterizations and Optimizers"
([E]); the parity test compares with ``adam_atan2_pytorch.AdamAtan2`` (lucidrains), which uses
the same ``a``/``b`` meaning, bias correction and coupled decay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from hptransfer.optim import apply_decay, foreach_chunks


class AdamAtan2(torch.optim.Optimizer):
    """Adam-atan2 (see the module docstring). Per-group keys: lr, betas, a, b, weight_decay."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        a: float = 1.27,
        b: float = 1.0,
        weight_decay: float = 0.0,
        wd_mode: str = "coupled",
    ) -> None:
        defaults = dict(lr=lr, betas=betas, a=a, b=b, weight_decay=weight_decay, wd_mode=wd_mode)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            states = [self.state[p] for p in params]
            for p, st in zip(params, states):
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
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
        torch._foreach_lerp_(ms, grads, 1.0 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, 1.0 - beta2)
        # denominators b * sqrt(v_hat), numerators m_hat
        den = torch._foreach_mul(
            vs, [group["b"] ** 2 / (1.0 - beta2 ** st["step"]) for st in states]
        )
        torch._foreach_sqrt_(den)
        num = torch._foreach_mul(ms, [1.0 / (1.0 - beta1 ** st["step"]) for st in states])
        for n, d in zip(num, den):
            torch.atan2(n, d, out=n)
        apply_decay(group, params)
        torch._foreach_add_(params, num, alpha=-group["lr"] * group["a"])
