r"""Spectral functions of stacks of matrices, as Shampoo uses them: inverse roots of its
statistics (with the fallbacks that keep a run going where ``eigh`` fails) and the top singular
value of its step directions and the bound that value has while the roots are fresh.

Inverse roots come from an eigendecomposition ``M = Q diag(lam) Q^T``:
``M^{-1/root} = Q diag((max(lam, 0) + e)^{-1/root}) Q^T`` with ``e = eps * max(lam)``
(relative) or ``e = eps``, zero along directions where ``lam + e`` is 0. They are computed in
the input's dtype (at least float32), one batched ``eigh`` per stack: in float32 they are
accurate to about 1e-3 relative on the gradient for a relative ``eps`` >= 1e-6. An
eigendecomposition that fails (an error, or MKL's float32 ``eigh`` returning NaN, as it does for
some statistics with many zero rows) is redone in float64. Where that fails too (MKL's float64
``eigh`` raised on such statistics with one thread: nanodo with 8 tokens, widths 512 and 1024),
a run must not stop: each matrix of the stack is then decomposed on its own in float64; one that
still fails is decomposed shifted, ``M + d I`` with ``d`` its mean eigenvalue (``trace / dim``),
and ``d`` is subtracted from the eigenvalues again (a shift moves no eigenvector, so this is the
same root up to float64 rounding, about ``1e-16 max(lam)``, far below ``e``); one that fails
even so keeps its previous root (none at Shampoo's first refresh: no step on that block until
the next refresh, as for an all-zero statistic). The matrices that needed the shift or kept
their root are counted.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def inverse_root(
    mats_BxMxM: Tensor,
    root: int,
    eps: float,
    relative: bool,
    scale: float = 1.0,
    previous_BxMxM: Tensor | None = None,
) -> tuple[Tensor, int]:
    """``(scale M + e I)^(-1/root)`` for a stack of symmetric PSD matrices (``e`` as in the
    module docstring, from the scaled eigenvalues), via ``eigh`` in the input's dtype (at least
    float32), and the number of matrices that needed a fallback.
    Where ``eigh`` fails (an error or a non-finite result) the stack is redone in float64, and
    where that fails each matrix alone, then shifted, then ``previous`` (zeros if None) stands in
    for its root (module docstring); the count is the matrices that needed the shift or kept
    their previous root. ``eigh`` reads only the lower triangle, so a statistic that is symmetric
    up to rounding needs no symmetrizing."""
    work = mats_BxMxM.to(torch.promote_types(mats_BxMxM.dtype, torch.float32))
    found = _eigh(work) or _eigh(work.double())
    if found is not None:
        return _powered(*found, root, eps, relative, scale).to(mats_BxMxM.dtype), 0
    roots, fallbacks = [], 0
    for i, mat in enumerate(work.double()):
        found = _eigh(mat)
        if found is None:
            fallbacks += 1
            shift = mat.diagonal().mean()
            found = _eigh(mat + shift * torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device))
            found = None if found is None else (found[0] - shift, found[1])
        if found is not None:
            roots.append(_powered(*found, root, eps, relative, scale))
        elif previous_BxMxM is not None:
            roots.append(previous_BxMxM[i].to(mat.dtype))
        else:
            roots.append(torch.zeros_like(mat))
    return torch.stack(roots).to(mats_BxMxM.dtype), fallbacks


def _eigh(mats: Tensor) -> tuple[Tensor, Tensor] | None:
    """``torch.linalg.eigh(mats)``, or None where it raises or gives a non-finite result."""
    try:
        lam, q = torch.linalg.eigh(mats)
    except torch.linalg.LinAlgError:
        return None
    # one reduction instead of an elementwise test: a NaN or inf anywhere makes it non-finite
    # (eigenvector entries are at most 1 in size, so the sum cannot overflow)
    return (lam, q) if torch.isfinite(lam.sum() + q.sum()).item() else None


def _powered(lam: Tensor, q: Tensor, root: int, eps: float, relative: bool, scale: float) -> Tensor:
    """``Q diag((scale max(lam, 0) + e)^(-1/root)) Q^T``, zero along directions where the shifted
    eigenvalue is 0 (an all-zero statistic in relative mode, or eps = 0)."""
    lam = lam.clamp_min(0.0) * scale
    reg = eps * lam.amax(-1, keepdim=True) if relative else eps
    shifted = lam + reg
    powered = torch.where(shifted > 0, shifted, 1.0).pow(-1.0 / root) * (shifted > 0)
    return (q * powered.unsqueeze(-2)) @ q.mT


def top_singular_value(mats_KxMxN: Tensor, v_KxNx1: Tensor, iters: int) -> Tensor:
    """Largest singular value of each matrix by ``iters`` power iterations on ``M^T M`` from
    ``v`` (updated in place to the new right singular vector estimate). A lower bound that
    converges from below; exact for rank-1 matrices after one iteration."""
    v = v_KxNx1
    for _ in range(iters):
        v = mats_KxMxN.mT @ (mats_KxMxN @ v)
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(
            torch.finfo(v.dtype).tiny
        )
    v_KxNx1.copy_(v)
    sigma_K: Tensor = torch.linalg.vector_norm(mats_KxMxN @ v, dim=(1, 2))
    return sigma_K


def fresh_bound(step: int, momentum: float, decay: float | None) -> float:
    """The largest spectral norm a block's step direction can have at ``step`` when its roots
    include this step's statistics: ``sum_s a_s w_s^(-1/2)`` over past gradients ``G_s``, with
    ``a_s`` their weight in the (bias-corrected) momentum and ``w_s`` the weight of ``G_s G_s^T``
    in the (bias-corrected) statistics, since ``L >= w G G^T`` and ``R >= w G^T G`` give
    ``||L^-1/4 G R^-1/4|| <= w^-1/2``. 1 for summed statistics; ``sqrt((1 - b2^t) / (1 - b2))``
    for an EMA without momentum."""
    if decay is None:
        return 1.0  # every w_s = 1, and the a_s sum to 1
    total = math.sqrt((1.0 - decay**step) / (1.0 - decay))  # w_t^-1/2
    if not momentum:
        return total
    r = momentum / math.sqrt(decay)  # a_s w_s^-1/2 is geometric in t - s
    geometric = step if r == 1.0 else (1.0 - r**step) / (1.0 - r)
    return (1.0 - momentum) / (1.0 - momentum**step) * total * geometric
