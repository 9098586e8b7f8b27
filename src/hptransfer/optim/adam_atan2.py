r"""Adam-atan2: Adam with the epsilon-division replaced by ``atan2``.

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t) \\
    w_t &= w_{t-1} - \eta\, a \operatorname{atan2}\big(\hat m_t,\; b \sqrt{\hat v_t}\big)

There is no epsilon: the step is exactly invariant to a rescaling of the gradient, a zero
gradient gives a zero step, and the step is bounded by ``eta * a * pi / 2``. Defaults: betas
(0.9, 0.95) (the reference's default is (0.9, 0.99)), ``a`` = 1.27 (about 4/pi), ``b`` = 1.
With ``x = m_hat / sqrt(v_hat)`` (Adam's step per unit LR, without epsilon) and ``b = 1`` the
step is ``a * atan(x)``: ``a = 4/pi`` makes it equal Adam's where ``|m_hat| = sqrt(v_hat)``
(``x = +-1``, e.g. a gradient of constant sign and size), since ``atan(1) = pi/4``; for small
``x`` it is about ``a * x``, 1.27 times Adam's step, and for large ``x`` it saturates at
``a * pi/2``.
``a = b = 1`` (the small-``x`` match) is the other setting used in public readings of [E]; pass
it explicitly.

Weight decay is a multiplicative shrink applied before the update (see
:mod:`hptransfer.optim`): coupled ``w *= 1 - lr * wd`` (the reference's default form) or
independent ``w *= 1 - wd * lr / initial_lr``.

Reference: Everett et al. 2024, "Scaling Exponents Across Parameterizations and Optimizers"
([E]); the parity test compares with ``adam_atan2_pytorch.AdamAtan2`` (lucidrains), which uses
the same ``a``/``b`` meaning, bias correction and coupled decay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from hptransfer.optim._base import InHouseOptimizer, State, sqrt_v_hat, update_moments
from hptransfer.optim.decay import apply_decay
from hptransfer.optim.registry import OptimizerSpec, family, signature_knobs


class AdamAtan2(InHouseOptimizer):
    """Adam-atan2 (see the module docstring). Per-group keys: lr, betas, a, b, weight_decay."""

    buffers = ("exp_avg", "exp_avg_sq")

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

    def _update(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        beta1, beta2 = group["betas"]
        ms, vs = update_moments(states, grads, group["betas"])
        # denominators b * sqrt(v_hat), numerators m_hat
        den = sqrt_v_hat(vs, states, beta2, scale=group["b"] ** 2)
        num = torch._foreach_mul(ms, [1.0 / (1.0 - beta1 ** st["step"]) for st in states])
        for n, d in zip(num, den):
            torch.atan2(n, d, out=n)
        apply_decay(group, params)
        torch._foreach_add_(params, num, alpha=-group["lr"] * group["a"])


SPEC = OptimizerSpec(
    name="adam_atan2",
    factory=lambda groups, cfg: AdamAtan2(groups, **cfg),
    knobs=signature_knobs(AdamAtan2),
    regime=family("adam"),  # an elementwise-normalized step; no epsilon
)
