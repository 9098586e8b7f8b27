r"""Shampoo (Gupta et al. 2018) with blocking, periodic inverse roots and optional grafting.

For a matrix parameter (tensors with more than two dims are viewed as
``(shape[0], prod(shape[1:]))``) and each block ``G`` of its gradient:

.. math::

    L &\leftarrow L + G G^\top, \qquad R \leftarrow R + G^\top G \\
    w &\leftarrow w - \eta\, L^{-1/4}\, G\, R^{-1/4}

Inverse roots come from a float64 eigendecomposition ``M = Q diag(lam) Q^T``:
``M^{-1/4} = Q diag((max(lam, 0) + e)^{-1/4}) Q^T`` with ``e = eps`` (default 1e-12) or, with
``eps_relative=True``, ``e = eps * max(lam)`` (follows the eigenvalue scale, as the spectral
muP rule needs). They are recomputed every ``precondition_frequency`` steps (default 10; first
at step 1) and the last roots are used in between. Dimensions larger than
``max_preconditioner_dim`` (default 1024) are split into near-equal blocks, each block with
its own ``L`` and ``R`` (for the spectral muP rule, blocks must be at least as large as the
widest layer).

1-D (and 0-d) parameters use the diagonal analogue (order-1 Shampoo, i.e. Adagrad):
``a += g^2; w -= lr * g * (a + e)^{-1/2}``, updated every step.

Grafting (off by default, as the spectral muP rule requires): with ``grafting="adam"`` Adam
moments (``betas``, default (0.9, 0.999), ``graft_eps`` 1e-8, bias-corrected) are kept and each
block's step is Shampoo's direction rescaled to the Frobenius norm of Adam's step on that block
(for 1-D parameters: the diagonal direction with Adam's norm). With grafting use the AdamW
width rules. No momentum is applied to the Shampoo direction.

Weight decay: a shrink before the update, coupled ``w *= 1 - lr * wd`` or independent
``w *= 1 - wd * lr / initial_lr`` (see :mod:`hptransfer.optim`).

Reference: Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization",
ICML 2018. Without grafting and with ``precondition_frequency=1`` this equals pytorch_optimizer's
``Shampoo(momentum=0, weight_decay=0, preconditioning_compute_steps=1, matrix_eps=eps)`` on 2-D
parameters (that one starts its statistics at ``eps * I``, the same as adding ``eps`` to the
eigenvalues, computes roots by SVD, and gives a zero step before its first root computation
when ``preconditioning_compute_steps > 1``; it preconditions 1-D parameters with a full
matrix, so there is no matching configuration for them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from hptransfer.optim import apply_decay

GRAFTINGS = (None, "adam")


def _blocks(n: int, max_dim: int) -> list[slice]:
    """Split ``range(n)`` into ``ceil(n / max_dim)`` near-equal contiguous slices."""
    k = max(1, math.ceil(n / max_dim))
    base, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        size = base + (1 if i < extra else 0)
        out.append(slice(start, start + size))
        start += size
    return out


def inverse_root(mat: Tensor, root: int, eps: float, relative: bool) -> Tensor:
    """``(mat + e I)^(-1/root)`` of a symmetric PSD matrix via float64 ``eigh``."""
    m64 = mat.to(torch.float64)
    lam, q = torch.linalg.eigh((m64 + m64.T) * 0.5)
    lam = lam.clamp_min(0.0)
    reg = eps * lam.max() if relative else lam.new_tensor(eps)
    reg = reg.clamp_min(torch.finfo(torch.float64).tiny)
    return ((q * (lam + reg).pow(-1.0 / root)) @ q.T).to(mat.dtype)


class Shampoo(torch.optim.Optimizer):
    """Blocked Shampoo. Per-group keys: lr, eps, eps_relative, betas, graft_eps, weight_decay."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        eps: float = 1e-12,
        eps_relative: bool = False,
        max_preconditioner_dim: int = 1024,
        precondition_frequency: int = 10,
        grafting: str | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        graft_eps: float = 1e-8,
        weight_decay: float = 0.0,
        wd_mode: str = "coupled",
    ) -> None:
        if grafting not in GRAFTINGS:
            raise ValueError(f"unknown grafting {grafting!r}; valid: None, 'adam'")
        if max_preconditioner_dim < 1 or precondition_frequency < 1:
            raise ValueError("max_preconditioner_dim and precondition_frequency must be >= 1")
        self.max_preconditioner_dim = max_preconditioner_dim
        self.precondition_frequency = precondition_frequency
        self.grafting = grafting
        defaults = dict(
            lr=lr,
            eps=eps,
            eps_relative=eps_relative,
            betas=betas,
            graft_eps=graft_eps,
            weight_decay=weight_decay,
            wd_mode=wd_mode,
        )
        super().__init__(params, defaults)

    def _direction(self, p: Tensor, st: dict[str, Any], group: dict[str, Any]) -> Tensor:
        """Shampoo's (ungrafted) direction for ``p``, updating its statistics."""
        grad = p.grad
        eps, relative = group["eps"], group["eps_relative"]
        if p.ndim < 2:
            acc = st.setdefault("sum_sq", torch.zeros_like(p))
            acc.addcmul_(grad, grad)
            reg = eps * acc.max() if relative else eps
            return grad * (acc + reg).clamp_min(torch.finfo(p.dtype).tiny).rsqrt()
        g2 = grad.reshape(p.shape[0], -1)
        rows = _blocks(g2.shape[0], self.max_preconditioner_dim)
        cols = _blocks(g2.shape[1], self.max_preconditioner_dim)
        refresh = (st["step"] - 1) % self.precondition_frequency == 0
        out = torch.empty_like(g2)
        for i, rs in enumerate(rows):
            for j, cs in enumerate(cols):
                key = f"{i}_{j}"
                gb = g2[rs, cs]
                if f"L{key}" not in st:
                    st[f"L{key}"] = p.new_zeros(gb.shape[0], gb.shape[0])
                    st[f"R{key}"] = p.new_zeros(gb.shape[1], gb.shape[1])
                lmat, rmat = st[f"L{key}"], st[f"R{key}"]
                lmat.addmm_(gb, gb.T)
                rmat.addmm_(gb.T, gb)
                if refresh:
                    st[f"L{key}_root"] = inverse_root(lmat, 4, eps, relative)
                    st[f"R{key}_root"] = inverse_root(rmat, 4, eps, relative)
                out[rs, cs] = st[f"L{key}_root"] @ gb @ st[f"R{key}_root"]
        return out.view_as(p)

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
            updates = []
            for p in params:
                st = self.state[p]
                st["step"] = st.get("step", 0) + 1
                direction = self._direction(p, st, group)
                if self.grafting == "adam":
                    direction = self._graft(p, st, group, direction)
                updates.append(direction)
            apply_decay(group, params)
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss

    def _graft(
        self, p: Tensor, st: dict[str, Any], group: dict[str, Any], direction: Tensor
    ) -> Tensor:
        """Rescale ``direction`` block by block to the norm of Adam's step."""
        grad = p.grad
        beta1, beta2 = group["betas"]
        m = st.setdefault("exp_avg", torch.zeros_like(p))
        v = st.setdefault("exp_avg_sq", torch.zeros_like(p))
        m.lerp_(grad, 1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        t = st["step"]
        adam = (m / (1.0 - beta1**t)) / ((v / (1.0 - beta2**t)).sqrt_().add_(group["graft_eps"]))
        if p.ndim < 2:
            blocks = [(slice(None), slice(None))]
            d2, a2 = direction.view(1, -1), adam.view(1, -1)
        else:
            d2, a2 = direction.reshape(p.shape[0], -1), adam.reshape(p.shape[0], -1)
            blocks = [
                (rs, cs)
                for rs in _blocks(d2.shape[0], self.max_preconditioner_dim)
                for cs in _blocks(d2.shape[1], self.max_preconditioner_dim)
            ]
        for rs, cs in blocks:
            db = d2[rs, cs]
            dn = torch.linalg.vector_norm(db)
            scale = torch.where(dn > 0, torch.linalg.vector_norm(a2[rs, cs]) / dn, 0.0)
            db.mul_(scale)
        return d2.view_as(p)
