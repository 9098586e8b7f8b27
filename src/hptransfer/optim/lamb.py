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


class ClampWarning(UserWarning):
    """A LAMB run whose clamp does not bind for some tensors (:func:`clamp_warning`)."""


def tensor_norms(optimizer: torch.optim.Optimizer, names: Mapping[int, str]
                 ) -> list[tuple[str, float, float | None]]:  # fmt: skip
    """(name, Frobenius norm now, its group's clamp or None) of each tensor a LAMB optimizer
    steps (``names``: id(parameter) -> name)."""
    with torch.no_grad():
        return [(names[id(p)], float(p.norm()), group.get("clamp"))
                for group in optimizer.param_groups for p in group["params"]]  # fmt: skip


def clamp_warning(optimizer: torch.optim.Optimizer, names: Mapping[int, str]) -> str | None:
    """One line naming the tensors whose norm is below their clamp now, where the step is
    ``lr * ||w||``, not the fixed ``lr * clamp`` the clamped rule (`regime`) is derived for,
    and what fixes it; None when every one binds (or there is no clamp)."""
    norms = tensor_norms(optimizer, names)
    below = [(name, norm, clamp) for name, norm, clamp in norms
             if clamp is not None and norm < clamp]  # fmt: skip
    if not below:
        return None
    shown = ", ".join(f"{name} {norm:.3g}" for name, norm, _ in below[:3])
    more = ", ..." if len(below) > 3 else ""
    return (f"LAMB's clamp {below[0][2]:g} does not bind at init for {len(below)} of "
            f"{len(norms)} tensors ({shown}{more}): there a step is lr x ||w||, not the fixed "
            "lr x clamp the clamped rule is derived for, so its exponents do not hold for them (a "
            "wider model, or a clamp below their norms: optimizer.options.clamp = X, in rules "
            "--option clamp=X; docs/parameterizations.md, LAMB)")  # fmt: skip


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
