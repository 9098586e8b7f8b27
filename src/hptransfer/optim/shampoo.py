r"""Shampoo (Gupta et al. 2018) with blocking, periodic inverse roots and optional grafting.

For a matrix parameter (tensors with more than two dims are viewed as
``(shape[0], prod(shape[1:]))``) and each block ``G`` of its gradient:

.. math::

    L &\leftarrow L + G G^\top, \qquad R \leftarrow R + G^\top G \\
    w &\leftarrow w - \eta\, L^{-1/4}\, G\, R^{-1/4}

Inverse roots come from an eigendecomposition ``M = Q diag(lam) Q^T``:
``M^{-1/4} = Q diag((max(lam, 0) + e)^{-1/4}) Q^T`` with ``e = eps * max(lam)`` (default,
``eps_relative=True``, ``eps`` 1e-6, as in Anil et al.'s distributed Shampoo) or ``e = eps``
(``eps_relative=False``). The relative epsilon follows the scale of the statistics (which grows
with the gradient scale, the block's dimensions and the number of steps), so one value works at
every width, as the spectral muP rule needs, and it bounds the amplification of a direction
absent from the statistics, relative to the leading one, at ``eps^(-1/4)`` per side. An absolute
epsilon does neither (the usual 1e-12 allows ``(max(lam) / 1e-12)^(1/4)`` per side, 1e3 at
``max(lam)`` = 1): on nanodo at width 256 (100 steps, lr 0.03) it diverged where the relative
1e-6 trained. Where ``lam + e`` is
0 (an all-zero statistic in relative mode, e.g. of a layer behind a zero-initialized readout at
step 1; zero eigenvalues with ``eps`` = 0) the root has no component: no step there until the
next refresh.

The roots are recomputed on each of the first ``k = precondition_frequency`` steps (default 10)
and then every ``k`` steps (steps 1, 2, ..., k, 2k, 3k, ...); the last roots are used in
between. Early statistics have a rank of at most the number of gradients seen, so roots that
are k steps old then miss most of the current gradient, whose new directions get the
``eps``-amplified step; on nanodo at width 64 roots at steps 1, 11, 21, ... diverged at lr 0.1
where this schedule trains. Roots are computed in the parameter's dtype (at least float32),
one batched ``eigh`` for all blocks of one size in a group: in float32 they are accurate to
about 1e-3 relative on the gradient for a relative ``eps`` >= 1e-6. An eigendecomposition that
fails (an error, or MKL's float32 ``eigh`` returning NaN, as it does for some statistics with
many zero rows) is redone in float64.

Dimensions larger than ``max_preconditioner_dim`` (default 1024) are split into near-equal
blocks, each block with its own ``L`` and ``R`` (for the spectral muP rule, blocks must be at
least as large as the widest layer). Blocks of equal shape are stacked, so statistics, roots and
preconditioning run as batched matrix products.

1-D (and 0-d) parameters use the diagonal analogue (order-1 Shampoo, i.e. Adagrad):
``a += g^2; w -= lr * g * (a + e)^{-1/2}`` with ``e = eps * max(a)`` (relative) or ``eps``,
updated every step.

Grafting (off by default, as the spectral muP rule requires): with ``grafting="adam"`` Adam
moments (``betas``, default (0.9, 0.999), ``graft_eps`` 1e-8, bias-corrected) are kept and each
block's step is Shampoo's direction rescaled to the Frobenius norm of Adam's step on that block
(for 1-D parameters: the diagonal direction with Adam's norm). With grafting use the AdamW
width rules. No momentum is applied to the Shampoo direction.

Weight decay: a shrink before the update, coupled ``w *= 1 - lr * wd`` or independent
``w *= 1 - wd * lr / initial_lr`` (see :mod:`hptransfer.optim`).

Reference: Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization",
ICML 2018; the relative epsilon follows Google's distributed Shampoo (Anil et al. 2020). With
``eps_relative=False``, no grafting and ``precondition_frequency=1`` this equals
pytorch_optimizer's ``Shampoo(momentum=0, weight_decay=0, preconditioning_compute_steps=1,
matrix_eps=eps)`` on 2-D parameters (that one starts its statistics at ``eps * I``, the same as
adding ``eps`` to the eigenvalues, computes roots by SVD, and gives a zero step before its first
root computation when ``preconditioning_compute_steps > 1``; it preconditions 1-D parameters
with a full matrix, so there is no matching configuration for them).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from hptransfer.optim import apply_decay
from hptransfer.optim._base import InHouseOptimizer, State, sqrt_v_hat, update_moments

GRAFTINGS = (None, "adam")

Block = tuple[slice, slice]


def _cuts(n: int, max_dim: int) -> list[slice]:
    """Split ``range(n)`` into ``ceil(n / max_dim)`` near-equal contiguous slices."""
    k = max(1, math.ceil(n / max_dim))
    base, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        size = base + (1 if i < extra else 0)
        out.append(slice(start, start + size))
        start += size
    return out


@functools.lru_cache(maxsize=256)
def block_classes(rows: int, cols: int, max_dim: int) -> tuple[tuple[Block, ...], ...]:
    """The blocks of a ``rows x cols`` matrix, grouped by shape (at most four shapes)."""
    by_shape: dict[tuple[int, int], list[Block]] = {}
    for rs in _cuts(rows, max_dim):
        for cs in _cuts(cols, max_dim):
            by_shape.setdefault((rs.stop - rs.start, cs.stop - cs.start), []).append((rs, cs))
    return tuple(tuple(blocks) for blocks in by_shape.values())


def _gather(mat: Tensor, blocks: tuple[Block, ...]) -> Tensor:
    """The ``blocks`` of ``mat`` stacked into a ``(k, m, n)`` tensor (a view for one block)."""
    if len(blocks) == 1:
        rs, cs = blocks[0]
        return mat[rs, cs].unsqueeze(0)
    return torch.stack([mat[rs, cs] for rs, cs in blocks])


def _scatter(out: Tensor, blocks: tuple[Block, ...], values_KxMxN: Tensor) -> None:
    for (rs, cs), v in zip(blocks, values_KxMxN):
        out[rs, cs] = v


def inverse_root(mats_BxMxM: Tensor, root: int, eps: float, relative: bool) -> Tensor:
    """``(M + e I)^(-1/root)`` for a stack of symmetric PSD matrices (``e`` as in the module
    docstring), via ``eigh`` in the input's dtype (at least float32, float64 if that fails)."""
    work = mats_BxMxM.to(torch.promote_types(mats_BxMxM.dtype, torch.float32))
    work = (work + work.mT) * 0.5
    try:
        lam, q = torch.linalg.eigh(work)
        failed = not (torch.isfinite(lam).all() and torch.isfinite(q).all())
    except torch.linalg.LinAlgError:
        failed = True
    if failed:  # e.g. MKL's float32 eigh returns NaN for some matrices with many zero rows
        lam, q = torch.linalg.eigh(work.double())
    lam = lam.clamp_min(0.0)
    reg = eps * lam.amax(-1, keepdim=True) if relative else eps
    shifted = lam + reg
    # an all-zero statistic (relative mode) or eps = 0: no step along zero eigenvalues
    scale = torch.where(shifted > 0, shifted, 1.0).pow(-1.0 / root) * (shifted > 0)
    return ((q * scale.unsqueeze(-2)) @ q.mT).to(mats_BxMxM.dtype)


class Shampoo(InHouseOptimizer):
    """Blocked Shampoo. Per-group keys: lr, eps, eps_relative, betas, graft_eps, weight_decay."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        eps: float = 1e-6,
        eps_relative: bool = True,
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

    def _refreshes(self, step: int) -> bool:
        k = self.precondition_frequency
        return step <= k or step % k == 0

    def _classes(self, p: Tensor) -> tuple[tuple[Block, ...], ...]:
        return block_classes(p.shape[0], p[0].numel(), self.max_preconditioner_dim)

    def _step_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        for st in states:
            st["step"] += 1
        matrices = [(p, st) for p, st in zip(params, states) if p.ndim >= 2]
        vectors = [(p, st) for p, st in zip(params, states) if p.ndim < 2]
        grads_KxMxN = [self._accumulate(p, st) for p, st in matrices]
        self._refresh_roots(group, matrices)
        updates = {p: self._precondition(p, st, g) for (p, st), g in zip(matrices, grads_KxMxN)}
        if vectors:
            for p, u in zip([p for p, _ in vectors], self._diagonal(group, vectors)):
                updates[p] = u
        if self.grafting == "adam":
            self._graft(group, params, states, updates)
        apply_decay(group, params)
        torch._foreach_add_(params, [updates[p] for p in params], alpha=-group["lr"])

    def _accumulate(self, p: Tensor, st: State) -> list[Tensor]:
        """Add this step's ``G G^T`` and ``G^T G`` to the statistics; return the stacked blocks."""
        g2 = p.grad.reshape(p.shape[0], -1)
        stacked = []
        for c, blocks in enumerate(self._classes(p)):
            g_KxMxN = _gather(g2, blocks)
            if f"L{c}" not in st:
                k, m, n = g_KxMxN.shape
                st[f"L{c}"] = p.new_zeros(k, m, m)
                st[f"R{c}"] = p.new_zeros(k, n, n)
            st[f"L{c}"].baddbmm_(g_KxMxN, g_KxMxN.mT)
            st[f"R{c}"].baddbmm_(g_KxMxN.mT, g_KxMxN)
            stacked.append(g_KxMxN)
        return stacked

    def _refresh_roots(self, group: dict[str, Any], matrices: list[tuple[Tensor, State]]) -> None:
        """Recompute due inverse roots, one batched ``eigh`` per matrix size and dtype."""
        pending: dict[tuple[int, torch.dtype], list[tuple[State, str]]] = {}
        for p, st in matrices:
            if not self._refreshes(st["step"]):
                continue
            for c in range(len(self._classes(p))):
                for key in (f"L{c}", f"R{c}"):
                    mat = st[key]
                    pending.setdefault((mat.shape[-1], mat.dtype), []).append((st, key))
        for entries in pending.values():
            mats = torch.cat([st[key] for st, key in entries])
            roots = inverse_root(mats, 4, group["eps"], group["eps_relative"])
            sizes = [st[key].shape[0] for st, key in entries]
            for (st, key), r in zip(entries, roots.split(sizes)):
                st[f"{key}_root"] = r.clone()

    def _precondition(self, p: Tensor, st: State, grads_KxMxN: list[Tensor]) -> Tensor:
        """Shampoo's (ungrafted) direction ``L^(-1/4) G R^(-1/4)`` for every block of ``p``."""
        classes = self._classes(p)
        if len(classes) == 1 and len(classes[0]) == 1:
            return (st["L0_root"] @ grads_KxMxN[0] @ st["R0_root"]).view_as(p)
        out = torch.empty(p.shape[0], p[0].numel(), dtype=p.dtype, device=p.device)
        for c, (blocks, g_KxMxN) in enumerate(zip(classes, grads_KxMxN)):
            _scatter(out, blocks, st[f"L{c}_root"] @ g_KxMxN @ st[f"R{c}_root"])
        return out.view_as(p)

    @staticmethod
    def _diagonal(group: dict[str, Any], vectors: list[tuple[Tensor, State]]) -> list:
        """Adagrad directions ``g (a + e)^(-1/2)`` for 1-D parameters, updating ``a``."""
        for p, st in vectors:
            if "sum_sq" not in st:
                st["sum_sq"] = torch.zeros_like(p)
        grads = [p.grad for p, _ in vectors]
        accs = [st["sum_sq"] for _, st in vectors]
        torch._foreach_addcmul_(accs, grads, grads)
        if group["eps_relative"]:
            denom = torch._foreach_add(accs, [group["eps"] * a.max() for a in accs])
        else:
            denom = torch._foreach_add(accs, group["eps"])
        torch._foreach_clamp_min_(denom, torch.finfo(accs[0].dtype).tiny)
        torch._foreach_rsqrt_(denom)
        return torch._foreach_mul(denom, grads)

    def _graft(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        states: list[State],
        updates: dict[Tensor, Tensor],
    ) -> None:
        """Rescale each block of each update to the Frobenius norm of Adam's step there."""
        beta1, beta2 = group["betas"]
        for p, st in zip(params, states):
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = torch.zeros_like(p)
        ms, vs = update_moments(states, [p.grad for p in params], group["betas"])
        denom = sqrt_v_hat(vs, states, beta2)
        torch._foreach_add_(denom, group["graft_eps"])
        adam = torch._foreach_div(ms, denom)
        torch._foreach_mul_(adam, [1.0 / (1.0 - beta1 ** st["step"]) for st in states])
        for p, a in zip(params, adam):
            d = updates[p]
            if p.ndim < 2:
                d.mul_(_norm_ratio(a.reshape(1, 1, -1), d.reshape(1, 1, -1)).squeeze())
                continue
            a2, d2 = a.reshape(p.shape[0], -1), d.view(p.shape[0], -1)
            for blocks in self._classes(p):
                scale_K = _norm_ratio(_gather(a2, blocks), _gather(d2, blocks))
                for (rs, cs), s in zip(blocks, scale_K):
                    d2[rs, cs] *= s


def _norm_ratio(target_KxMxN: Tensor, direction_KxMxN: Tensor) -> Tensor:
    """Per block ``||target|| / ||direction||`` (0 where the direction is zero)."""
    tn = torch.linalg.vector_norm(target_KxMxN, dim=(-2, -1))
    dn = torch.linalg.vector_norm(direction_KxMxN, dim=(-2, -1))
    return torch.where(dn > 0, tn / dn.clamp_min(torch.finfo(dn.dtype).tiny), 0.0)
