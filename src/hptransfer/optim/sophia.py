r"""Sophia (Liu et al. 2023): sign-clipped, diagonally preconditioned momentum.

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    h &\leftarrow \beta_2 h + (1-\beta_2)\, \hat h \qquad\text{(every ``curvature_interval``
        steps, via :meth:`Sophia.refresh_curvature`)} \\
    w &\leftarrow w - \eta \lambda w \\
    w &\leftarrow w - \eta\, \operatorname{sign}(m_t)
        \min\!\Big(\frac{|m_t|}{\max(\rho h, \epsilon)},\ 1\Big)

Curvature estimates ``h_hat`` (diagonal):

* ``variant="g"`` (Gauss-Newton-Bartlett): labels are sampled from ``softmax(logits)``, the
  mean cross-entropy on those labels is back-propagated and ``h_hat = N * grad^2`` with ``N``
  the number of (non-ignored) label positions. The batch-size factor of Liuhong99/Sophia's
  ``SophiaG`` (which uses ``rho * bs * h``) is thus folded into ``h``; ``rho`` stays a fixed,
  width- and batch-independent constant.
* ``variant="h"`` (Hutchinson): the mean cross-entropy on the true targets is differentiated
  twice; ``h_hat = u * (H u)`` with Rademacher ``u`` (one sample). ``h_hat`` can be negative;
  the ``max(rho h, eps)`` denominator then clips the coordinate to a sign step.

Until the first refresh ``h = 0`` and the update is ``lr * sign(m)``. Positions whose target is
-100 (torch's ``ignore_index``) are excluded from both estimates. Defaults: betas
(0.965, 0.99), rho 0.04, curvature_interval 10, eps 1e-15. The optimizer only keeps
``curvature_interval``; calling :meth:`refresh_curvature` on schedule is the trainer's job
(before the step's normal backward). The clip ("win") rate per tensor is the fraction of
coordinates where the ``min(., 1)`` is active; see :mod:`hptransfer.optim.diagnostics`.

Weight decay: coupled ``w *= 1 - lr * wd`` (the paper's form) or independent
``w *= 1 - wd * lr / initial_lr`` (see :mod:`hptransfer.optim`).

Reference: Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training", arXiv:2305.14342 (code: Liuhong99/Sophia). pytorch_optimizer's ``SophiaH``
computes ``clamp(m / max(h, e), -p, p)`` times ``lr``; it equals this update with
``lr_ref = lr / rho``, ``p = rho``, ``e = eps / rho`` and decoupled decay ``wd_ref = wd * rho``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hptransfer.optim._base import InHouseOptimizer, State
from hptransfer.optim.decay import apply_decay
from hptransfer.optim.diagnostics import clip_rate
from hptransfer.optim.registry import OptimizerSpec, family, signature_knobs

VARIANTS = ("g", "h")
IGNORE_INDEX = -100


class Sophia(InHouseOptimizer):
    """Sophia-G / Sophia-H. Per-group keys: lr, betas, rho, eps, weight_decay."""

    buffers = ("exp_avg", "hessian")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        variant: str = "g",
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        curvature_interval: int = 10,
        eps: float = 1e-15,
        weight_decay: float = 0.0,
        wd_mode: str = "coupled",
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown Sophia variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if curvature_interval < 1:
            raise ValueError(f"curvature_interval must be >= 1, got {curvature_interval}")
        self.variant = variant
        self.curvature_interval = curvature_interval
        defaults = dict(
            lr=lr, betas=betas, rho=rho, eps=eps, weight_decay=weight_decay, wd_mode=wd_mode
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def update_curvature(self, estimates: Sequence[Tensor | None]) -> None:
        """Fold diagonal curvature estimates into ``h`` (``h = b2 h + (1 - b2) h_hat``).

        ``estimates`` is aligned with the parameters of all groups in order; ``None`` skips one.
        """
        n_params = sum(len(g["params"]) for g in self.param_groups)
        if len(estimates) != n_params:
            raise ValueError(f"got {len(estimates)} estimates for {n_params} parameters")
        it = iter(estimates)
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                est = next(it)
                if est is not None:
                    self._state(p)["hessian"].lerp_(est.to(p.dtype), 1.0 - beta2)

    def refresh_curvature(self, logits_fn: Callable[[], Tensor], targets: Tensor) -> None:
        """Estimate the diagonal curvature on the current batch and fold it into ``h``.

        ``logits_fn()`` recomputes the model's logits (shape ``(..., V)``, with grad); ``targets``
        are the true labels (shape ``(...)``). Uses ``torch.autograd.grad``: the parameters'
        ``.grad`` are left untouched.
        """
        params = [p for g in self.param_groups for p in g["params"]]
        trainable = [p for p in params if p.requires_grad]
        with torch.enable_grad():
            logits = logits_fn()
            flat = logits.reshape(-1, logits.shape[-1])
            labels = targets.reshape(-1)
            valid = labels != IGNORE_INDEX
            flat, labels = flat[valid], labels[valid]
            if self.variant == "g":
                with torch.no_grad():
                    probs = torch.softmax(flat.detach().float(), dim=-1)
                    sampled = torch.multinomial(probs, 1).squeeze(-1)
                loss = F.cross_entropy(flat, sampled)
                grads = torch.autograd.grad(loss, trainable, allow_unused=True)
                n = float(labels.numel())
                est_of = {id(p): n * g * g for p, g in zip(trainable, grads) if g is not None}
            else:
                loss = F.cross_entropy(flat, labels)
                grads = torch.autograd.grad(loss, trainable, create_graph=True, allow_unused=True)
                used = [(p, g) for p, g in zip(trainable, grads) if g is not None]
                us = [torch.randint_like(p, 0, 2) * 2.0 - 1.0 for p, _ in used]
                hvs = torch.autograd.grad([g for _, g in used], [p for p, _ in used], us)
                est_of = {id(p): u * hv for (p, _), u, hv in zip(used, us, hvs)}
        self.update_curvature([est_of.get(id(p)) for p in params])

    def _update(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        ms = [st["exp_avg"] for st in states]
        hs = [st["hessian"] for st in states]
        torch._foreach_lerp_(ms, grads, 1.0 - group["betas"][0])
        denom = torch._foreach_mul(hs, group["rho"])
        torch._foreach_clamp_min_(denom, group["eps"])
        ratio = torch._foreach_abs(ms)
        torch._foreach_div_(ratio, denom)
        torch._foreach_clamp_max_(ratio, 1.0)
        torch._foreach_mul_(ratio, torch._foreach_sign(ms))
        apply_decay(group, params)
        torch._foreach_add_(params, ratio, alpha=-group["lr"])


_KNOBS = signature_knobs(Sophia)
SPEC = OptimizerSpec(
    name="sophia",
    factory=lambda groups, cfg: Sophia(groups, **cfg),
    knobs=_KNOBS,
    regime=family("adam"),  # sign-like clipped steps: elementwise normalized
    eps=_KNOBS["eps"],
    eps_power=2,  # max(rho h, eps) floors a curvature estimate quadratic in the gradient
    diagnostics=(clip_rate,),
    fsdp=False,
    not_data_parallel="its curvature estimate would differ per rank",
)
