r"""LAMB (You et al. 2020): Adam direction rescaled per tensor by a trust ratio.

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    r_t &= \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} + \lambda w_{t-1} \\
    w_t &= w_{t-1} - \eta\, \frac{\phi(\lVert w_{t-1} \rVert_F)}{\lVert r_t \rVert_F}\, r_t

with Frobenius norms per tensor and ``phi(x) = min(x, clamp)`` (``clamp`` = 10 by default;
``None`` or ``False``, the way a TOML config says it, makes ``phi`` the identity). When either
norm is zero the trust ratio is 1. With
``bias_correction=False``, ``m_hat = m`` and ``v_hat = v`` (pytorch_optimizer's ``Lamb``,
"version 3 without bias correction"). Defaults: betas (0.9, 0.999), eps 1e-6.

Width scaling (parameterizations.md section 6): the step has Frobenius norm
``lr * phi(||w||)``. With the clamp active that is ``lr * clamp`` whatever the weights' scale
(hidden steps width-free at constant LR; the spectral rule `regime` names, with k = 1 and
vectors' c = -1/2, see ``param.rules.SPECTRAL_DIRECT_C``); without it hidden updates grow like
``sqrt(width)`` (LAMB then behaves like Adam with parameter scaling).

Weight decay: in ``"coupled"`` mode ``lambda * w`` is inside ``r`` as above (the paper's form;
its size is then set by the trust ratio). In ``"independent"`` mode ``r`` has no decay term and
the weights are shrunk by ``w *= 1 - wd * lr / initial_lr`` before the update (see
:mod:`hptransfer.optim`). The last trust ratio of each tensor is kept in
``state["trust_ratio"]`` (a 0-d tensor) for diagnostics.

Reference: You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76
minutes", ICLR 2020. Parity: pytorch_optimizer ``Lamb(weight_decouple=False,
adam_debias=True)`` (its default also divides the final step by ``1 - beta1^t``) equals
``bias_correction=False`` here, up to the ``eps`` it adds to ``||r||`` in the trust ratio.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from hptransfer.errors import ConfigError
from hptransfer.optim._base import InHouseOptimizer, State, sqrt_v_hat, update_moments
from hptransfer.optim.decay import apply_decay
from hptransfer.optim.diagnostics import trust_ratio, underflow
from hptransfer.optim.registry import OptimizerSpec, Regime, family, signature_knobs


class Lamb(InHouseOptimizer):
    """LAMB. Per-group keys: lr, betas, eps, clamp, bias_correction, weight_decay."""

    buffers = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        clamp: float | None = 10.0,
        bias_correction: bool = True,
        weight_decay: float = 0.0,
        wd_mode: str = "coupled",
    ) -> None:
        clamp = checked_clamp(clamp)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            clamp=clamp,
            bias_correction=bias_correction,
            weight_decay=weight_decay,
            wd_mode=wd_mode,
        )
        super().__init__(params, defaults)

    def _update(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        beta1, beta2 = group["betas"]
        ms, vs = update_moments(states, grads, group["betas"])
        if group["bias_correction"]:
            denom = sqrt_v_hat(vs, states, beta2)
            torch._foreach_add_(denom, group["eps"])
            torch._foreach_mul_(denom, [1.0 - beta1 ** st["step"] for st in states])
        else:
            denom = torch._foreach_sqrt(vs)
            torch._foreach_add_(denom, group["eps"])
        update = torch._foreach_div(ms, denom)
        wd = group["weight_decay"]
        if group["wd_mode"] == "coupled":
            if wd:
                torch._foreach_add_(update, params, alpha=wd)
        else:
            apply_decay(group, params)
        w_norm = torch.stack(torch._foreach_norm(params))
        r_norm = torch.stack(torch._foreach_norm(update))
        phi = w_norm if group["clamp"] is None else w_norm.clamp(max=group["clamp"])
        ratio = torch.where((w_norm > 0) & (r_norm > 0), phi / r_norm, torch.ones_like(phi))
        ratios = ratio.unbind()
        for st, r in zip(states, ratios):
            st["trust_ratio"] = r
        torch._foreach_mul_(update, ratios)
        torch._foreach_add_(params, update, alpha=-group["lr"])


def below_clamp(optimizer: torch.optim.Optimizer, names: Mapping[int, str]
                ) -> list[tuple[str, float, float]]:  # fmt: skip
    """(name, Frobenius norm, clamp) of each tensor of a LAMB optimizer whose norm is below its
    group's clamp now (``names``: id(parameter) -> name). There the step is ``lr * ||w||``,
    not the fixed ``lr * clamp`` the clamped rule (`regime`) is derived for. Empty without a
    clamp."""
    out = []
    with torch.no_grad():
        for group in optimizer.param_groups:
            clamp = group.get("clamp")
            if clamp is None:
                continue
            for p in group["params"]:
                norm = float(p.norm())
                if norm < clamp:
                    out.append((names[id(p)], norm, float(clamp)))
    return out


def clamp_warning(optimizer: torch.optim.Optimizer, names: Mapping[int, str],
                  fix: str = "optimizer.options.clamp = X") -> str | None:  # fmt: skip
    """One line naming the tensors whose norm is below the clamp now (:func:`below_clamp`)
    and what fixes it (``fix``: how the caller sets the clamp); None when every one binds."""
    below = below_clamp(optimizer, names)
    if not below:
        return None
    total = sum(len(g["params"]) for g in optimizer.param_groups)
    shown = ", ".join(f"{name} {norm:.3g}" for name, norm, _ in below[:3])
    more = ", ..." if len(below) > 3 else ""
    return (f"LAMB's clamp {below[0][2]:g} does not bind at init for {len(below)} of {total} "
            f"tensors ({shown}{more}): there a step is lr x ||w||, not the fixed lr x clamp the "
            "clamped rule is derived for, so its exponents do not hold for them (a wider model, "
            f"or a clamp below their norms: {fix}; docs/parameterizations.md, LAMB)")  # fmt: skip


def checked_clamp(clamp: Any) -> float | None:
    """The clamp knob: a number > 0, or None / false (TOML has no null) for no clamp."""
    if clamp is None or clamp is False:
        return None
    if isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not 0 < clamp < math.inf:
        raise ConfigError(f"lamb option clamp must be a number > 0 or false (none), got {clamp!r}")
    return float(clamp)


def regime(knobs: Mapping[str, Any]) -> Regime:
    """Clamped (``clamp`` a number): every step has the fixed Frobenius norm ``lr * clamp``
    wherever the clamp binds, a spectral rule (parameterizations.md section 6); unclamped the
    step is ``lr * ||w||`` in size, like Adam with parameter scaling."""
    if checked_clamp(knobs["clamp"]) is None:
        return family("adam_ps")(knobs)
    return Regime("spectral", "lamb_clamped")


_KNOBS = signature_knobs(Lamb)
SPEC = OptimizerSpec(
    name="lamb",
    factory=lambda groups, cfg: Lamb(groups, **cfg),
    knobs=_KNOBS,
    regime=regime,
    eps=_KNOBS["eps"],
    diagnostics=(trust_ratio, underflow),
)
