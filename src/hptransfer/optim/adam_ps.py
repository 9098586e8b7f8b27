r"""Adam with parameter scaling ([E]'s "Adafactor" in its main sweeps).

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    s_t &= \max\big(\text{floor},\ \operatorname{rms}(w_{t-1})\big), \qquad
    \operatorname{rms}(w) = \lVert w \rVert_F / \sqrt{\operatorname{numel}(w)} \\
    w_t &= w_{t-1} - \eta\, s_t\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}

i.e. Adam's normalized step multiplied, per tensor, by the weight RMS (at least ``floor``), so
the relative change of each tensor is set by ``lr``. Defaults: betas (0.9, 0.95), eps 1e-8,
floor 1e-3 (optax's ``scale_by_param_block_rms`` default; [E]'s value is not stated).

Weight decay is a shrink applied before the update and is NOT multiplied by ``s_t``: coupled
``w *= 1 - lr * wd`` or independent ``w *= 1 - wd * lr / initial_lr`` (see
:mod:`hptransfer.optim`). ``s_t`` uses the weights before the decay.

Reference: Everett et al. 2024 ([E]), and Shazeer & Stern 2018 (Adafactor's parameter scaling);
the parity test checks against the formula written out above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from hptransfer.optim._base import InHouseOptimizer, State, sqrt_v_hat, update_moments
from hptransfer.optim.decay import apply_decay
from hptransfer.optim.diagnostics import underflow
from hptransfer.optim.registry import OptimizerSpec, family, signature_knobs


class AdamPS(InHouseOptimizer):
    """Adam with parameter scaling. Per-group keys: lr, betas, eps, floor, weight_decay."""

    buffers = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        floor: float = 1e-3,
        weight_decay: float = 0.0,
        wd_mode: str = "coupled",
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, floor=floor, weight_decay=weight_decay, wd_mode=wd_mode
        )
        super().__init__(params, defaults)

    def _update(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        beta1, beta2 = group["betas"]
        ms, vs = update_moments(states, grads, group["betas"])
        # per-tensor scale max(floor, rms(w)) from the weights before this step
        rms = torch.stack(torch._foreach_norm(params)).to("cpu", torch.float64)
        rms /= torch.tensor([math.sqrt(p.numel()) for p in params], dtype=torch.float64)
        scale = rms.clamp_min_(group["floor"])
        denom = sqrt_v_hat(vs, states, beta2)
        torch._foreach_add_(denom, group["eps"])
        bc1 = torch.tensor([1.0 - beta1 ** st["step"] for st in states], dtype=torch.float64)
        step_sizes = scale.mul_(-group["lr"]).div_(bc1)
        apply_decay(group, params)
        torch._foreach_addcdiv_(params, ms, denom, step_sizes)


_KNOBS = signature_knobs(AdamPS)
SPEC = OptimizerSpec(
    name="adam_ps",
    factory=lambda groups, cfg: AdamPS(groups, **cfg),
    knobs=_KNOBS,
    regime=family("adam_ps"),
    eps=_KNOBS["eps"],
    diagnostics=(underflow,),
    fsdp=False,
)
