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
where this schedule trains. Roots come from one batched ``eigh`` per statistic, with fallbacks
where it fails (:mod:`hptransfer.optim.spectral`); each matrix that needed the shift or kept its
previous root adds 1 to the parameter's ``state["eigh_fallbacks"]`` (absent while none did).

Stale roots (the steps between refreshes) are the optimizer's weak point: with statistics that
include the current gradient, each block's step has spectral norm at most ``lr`` (``L >= G
G^T`` and ``R >= G^T G`` give ``||L^-1/4 G R^-1/4|| <= ||L^-1/2 G||^1/2 ||G R^-1/2||^1/2 <= 1``),
but a gradient direction that the old statistics lack is amplified by up to ``eps^(-1/4)`` per
side. On nanodo (100 steps, widths 32 to 128) runs diverged on the first stale step (step 11),
at an LR that fell by an octave per doubling of width, and with roots every step none
diverged. ``normalize`` (default ``"clip"``) therefore divides each block's direction by
``max(1, its spectral norm / the bound)``: nothing changes while roots are fresh, and stale
steps keep the bound. ``"spectral"`` divides by the spectral norm itself (every block steps
``lr`` in spectral norm, the explicit normalization of Qiu et al. 2025); ``None`` is plain
Shampoo. The norm comes from power iteration on each block, continued from the last step's
vector (10 iterations on the first step, then 2): a lower bound that is close when one
direction dominates (as an amplified one does) and up to ~15% low when the top singular values
are close. With grafting the block norm is Adam's and ``normalize`` is not used.

The product ``L^-1/4 G R^-1/4`` runs in ``precondition_dtype`` (default bfloat16; the roots are
stored in it) for float32 and bfloat16 parameters, and in float64 for float64 parameters; None:
the parameter's dtype. Like Muon's Newton-Schulz iteration in bfloat16, this rounds the step's
direction (about 3 significant digits), not the statistics, which stay in the parameter's
dtype so that small eigenvalues keep their meaning.

Dimensions larger than ``max_preconditioner_dim`` (default 128) are split into near-equal
blocks, each block with its own ``L`` and ``R``, stacked by shape (:mod:`hptransfer.optim.blocks`)
so that statistics, roots and preconditioning run as batched matrix products. Under the spectral
muP rule each block's step has a width-free spectral norm and a rank-1 gradient's blocks add up to
a step ``sqrt(blocks)`` times larger, so the rule multiplies each matrix's LR by
``sqrt(blocks at base width / blocks)`` (:class:`hptransfer.param.rules.Rule`); with that
factor blocking also made the optimal LR move less with width (docs/reproductions.md).

1-D (and 0-d) parameters use the diagonal analogue (order-1 Shampoo, i.e. Adagrad):
``a += g^2; w -= lr * g * (a + e)^{-1/2}`` with ``e = eps * max(a)`` (relative) or ``eps``,
updated every step.

Grafting (off by default, as the spectral muP rule requires): with ``grafting="adam"`` Adam
moments (``betas``, default (0.9, 0.999), ``graft_eps`` 1e-8, bias-corrected) are kept and each
block's step is Shampoo's direction rescaled to the Frobenius norm of Adam's step on that block
(for 1-D parameters: the diagonal direction with Adam's norm). With grafting use the AdamW
width rules.

Momentum and EMA statistics (both off by default, as in Gupta et al.): ``momentum`` b1 > 0
preconditions the bias-corrected EMA of the gradient, ``m_hat = m / (1 - b1^t)`` with ``m = b1
m + (1 - b1) G``, instead of ``G``; ``statistics_decay`` b2 replaces the sums by ``L = b2 L +
(1 - b2) G G^T`` (and ``R``), bias-corrected by ``1 / (1 - b2^t)`` when the roots are computed.
Qiu et al. 2025 use both (b1 0.9, b2 0.95). The clip bound then becomes
:func:`~hptransfer.optim.spectral.fresh_bound` (``sqrt((1 - b2^t) / (1 - b2))`` for an EMA
without momentum). The diagonal path of 1-D parameters uses the same momentum and decay.

Weight decay: a shrink before the update, coupled ``w *= 1 - lr * wd`` or independent
``w *= 1 - wd * lr / initial_lr`` (see :mod:`hptransfer.optim`).

Reference: Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization",
ICML 2018; the relative epsilon follows Google's distributed Shampoo (Anil et al. 2020). With
``eps_relative=False``, no grafting, ``precondition_frequency=1`` and float64 this equals
pytorch_optimizer's ``Shampoo(momentum=0, weight_decay=0, preconditioning_compute_steps=1,
matrix_eps=eps)`` on 2-D parameters (that one starts its statistics at ``eps * I``, the same as
adding ``eps`` to the eigenvalues, computes roots by SVD, and gives a zero step before its first
root computation when ``preconditioning_compute_steps > 1``; it preconditions 1-D parameters
with a full matrix, so there is no matching configuration for them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from hptransfer.optim._base import InHouseOptimizer, State, sqrt_v_hat, update_moments
from hptransfer.optim.blocks import BlockGrid, assemble, block_classes
from hptransfer.optim.decay import apply_decay
from hptransfer.optim.registry import OptimizerSpec, Regime, family, signature_knobs
from hptransfer.optim.spectral import fresh_bound, inverse_root, top_singular_value

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

#: The default ``max_preconditioner_dim``: with the rule's block factor, blocking moved the
#: optimal LR less with width (docs/reproductions.md), and at width 512 it brings the step from
#: 27x to about 8x an AdamW step (benchmarks/).
SHAMPOO_BLOCK = 128

GRAFTINGS = (None, "adam")
NORMALIZES = (None, "clip", "spectral")
#: power iterations for each block's top singular value: on a block's first step, then per step
#: (from the last step's vector, which follows the block's slowly turning top direction)
POWER_ITERS_FIRST, POWER_ITERS = 10, 2


class Shampoo(InHouseOptimizer):
    """Blocked Shampoo. Per-group keys: lr, eps, eps_relative, momentum, statistics_decay,
    betas, graft_eps, weight_decay, wd_mode."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        eps: float = 1e-6,
        eps_relative: bool = True,
        max_preconditioner_dim: int = SHAMPOO_BLOCK,
        precondition_frequency: int = 10,
        grafting: str | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        graft_eps: float = 1e-8,
        weight_decay: float = 0.0,
        wd_mode: str = "coupled",
        normalize: str | None = "clip",
        precondition_dtype: str | None = "bfloat16",
        momentum: float = 0.0,
        statistics_decay: float | None = None,
    ) -> None:
        if grafting not in GRAFTINGS:
            raise ValueError(f"unknown grafting {grafting!r}; valid: None, 'adam'")
        if normalize not in NORMALIZES:
            raise ValueError(f"unknown normalize {normalize!r}; valid: None, 'clip', 'spectral'")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if statistics_decay is not None and not 0.0 < statistics_decay < 1.0:
            raise ValueError(f"statistics_decay must be None or in (0, 1), got {statistics_decay}")
        for name, value in (("max_preconditioner_dim", max_preconditioner_dim),
                            ("precondition_frequency", precondition_frequency)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.max_preconditioner_dim = max_preconditioner_dim
        self.precondition_frequency = precondition_frequency
        self.grafting = grafting
        if precondition_dtype not in (None, "bfloat16", "float32"):
            raise ValueError(
                f"unknown precondition_dtype {precondition_dtype!r}; valid: None, 'bfloat16', "
                "'float32'"
            )
        self.precondition_dtype: torch.dtype | None = (
            None if precondition_dtype is None else getattr(torch, precondition_dtype)
        )
        self.normalize = None if grafting else normalize  # grafting sets each block's norm
        defaults = dict(
            lr=lr,
            eps=eps,
            eps_relative=eps_relative,
            betas=betas,
            graft_eps=graft_eps,
            weight_decay=weight_decay,
            wd_mode=wd_mode,
            momentum=momentum,
            statistics_decay=statistics_decay,
        )
        super().__init__(params, defaults)

    def _product_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype of the preconditioning product for parameters of ``dtype``."""
        if self.precondition_dtype is None or dtype == torch.float64:
            return dtype
        return self.precondition_dtype

    def _refreshes(self, step: int) -> bool:
        k = self.precondition_frequency
        return step <= k or step % k == 0

    def _classes(self, p: Tensor) -> tuple[BlockGrid, ...]:
        return block_classes(p.shape[0], p[0].numel(), self.max_preconditioner_dim)

    def _step_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        for st in states:
            st["step"] += 1
        matrices = [(p, st) for p, st in zip(params, states) if p.ndim >= 2]
        vectors = [(p, st) for p, st in zip(params, states) if p.ndim < 2]
        grads_KxMxN = [self._accumulate(group, p, st) for p, st in matrices]
        self._refresh_roots(group, matrices)
        updates = {
            p: self._precondition(group, p, st, g) for (p, st), g in zip(matrices, grads_KxMxN)
        }
        if vectors:
            for p, u in zip([p for p, _ in vectors], self._diagonal(group, vectors)):
                updates[p] = u
        if self.grafting == "adam":
            self._graft(group, params, states, updates)
        apply_decay(group, params)
        torch._foreach_add_(params, [updates[p] for p in params], alpha=-group["lr"])

    def _accumulate(self, group: dict[str, Any], p: Tensor, st: State) -> list[Tensor]:
        """Add this step's ``G G^T`` and ``G^T G`` to the statistics (summed, or an EMA with
        ``statistics_decay``); return the stacked blocks of what is preconditioned: ``G``, or
        its momentum ``m`` (``m = b1 m + (1 - b1) G``, not yet bias-corrected)."""
        g2 = cast(Tensor, p.grad).reshape(p.shape[0], -1)
        decay = group["statistics_decay"]
        keep, add = (1.0, 1.0) if decay is None else (decay, 1.0 - decay)
        if group["momentum"]:
            if "momentum" not in st:
                st["momentum"] = torch.zeros_like(p)
            st["momentum"].lerp_(p.grad, 1.0 - group["momentum"])
            m2 = st["momentum"].reshape(p.shape[0], -1)
        stacked = []
        for c, grid in enumerate(self._classes(p)):
            g_KxMxN = grid.gather(g2)
            if f"L{c}" not in st:
                k, m, n = g_KxMxN.shape
                st[f"L{c}"] = p.new_zeros(k, m, m)
                st[f"R{c}"] = p.new_zeros(k, n, n)
            st[f"L{c}"].baddbmm_(g_KxMxN, g_KxMxN.mT, beta=keep, alpha=add)
            st[f"R{c}"].baddbmm_(g_KxMxN.mT, g_KxMxN, beta=keep, alpha=add)
            stacked.append(grid.gather(m2) if group["momentum"] else g_KxMxN)
        return stacked

    def _refresh_roots(self, group: dict[str, Any], matrices: list[tuple[Tensor, State]]) -> None:
        """Recompute due inverse roots, one batched ``eigh`` per statistic (all blocks of one
        shape), counting fallbacks in ``state["eigh_fallbacks"]``. Not concatenated across
        parameters: ``eigh`` runs matrix by matrix anyway, and large temporaries cost more in
        fresh memory pages than the batching saves."""
        for p, st in matrices:
            if not self._refreshes(st["step"]):
                continue
            decay = group["statistics_decay"]
            scale = 1.0 if decay is None else 1.0 / (1.0 - decay ** st["step"])  # bias correction
            for c in range(len(self._classes(p))):
                for key in (f"L{c}", f"R{c}"):
                    old = st.get(f"{key}_root")  # stands in where eigh fails
                    root, fallbacks = inverse_root(
                        st[key], 4, group["eps"], group["eps_relative"], scale, old
                    )
                    st[f"{key}_root"] = root.to(self._product_dtype(root.dtype))
                    if fallbacks:
                        st["eigh_fallbacks"] = st.get("eigh_fallbacks", 0) + fallbacks

    def _precondition(
        self, group: dict[str, Any], p: Tensor, st: State, grads_KxMxN: list[Tensor]
    ) -> Tensor:
        """Shampoo's (ungrafted) direction ``L^(-1/4) G R^(-1/4)`` for every block of ``p``
        (``G``: the gradient, or its bias-corrected momentum), normalized per ``normalize``; the
        product in the roots' dtype (bfloat16 for float32 parameters by default)."""
        classes = self._classes(p)
        b1, t = group["momentum"], st["step"]
        parts = []
        for c, (grid, g_KxMxN) in enumerate(zip(classes, grads_KxMxN)):
            left, right = st[f"L{c}_root"], st[f"R{c}_root"]
            d_KxMxN = left @ g_KxMxN.to(left.dtype) @ right
            if b1:
                d_KxMxN.mul_(1.0 / (1.0 - b1**t))  # the momentum's bias correction
            parts.append(grid.matrix(self._normalized(group, st, c, d_KxMxN), p.dtype))
        return assemble(classes, parts).view_as(p)

    def _normalized(self, group: dict[str, Any], st: State, c: int, d_KxMxN: Tensor) -> Tensor:
        """Each block's direction divided (in place) by its spectral norm ("spectral"), or by
        max(1, spectral norm / `fresh_bound`) ("clip"); the norm from power iteration (see the
        module docstring)."""
        if self.normalize is None:
            return d_KxMxN
        key = f"v{c}"
        iters = POWER_ITERS
        if key not in st:  # a fixed start, so that runs repeat exactly
            gen = torch.Generator().manual_seed(c)
            v = torch.randn(d_KxMxN.shape[0], d_KxMxN.shape[2], 1, generator=gen)
            st[key] = _placed_like(v.to(dtype=d_KxMxN.dtype, device=d_KxMxN.device), d_KxMxN)
            iters = POWER_ITERS_FIRST
        sigma_K = top_singular_value(d_KxMxN, st[key], iters)
        if self.normalize == "clip":
            bound = fresh_bound(st["step"], group["momentum"], group["statistics_decay"])
            sigma_K = (sigma_K / bound).clamp_min(1.0)
        scale = torch.where(
            sigma_K > 0, 1.0 / sigma_K.clamp_min(torch.finfo(sigma_K.dtype).tiny), 0.0
        )
        return d_KxMxN.mul_(scale[:, None, None])

    @staticmethod
    def _diagonal(group: dict[str, Any], vectors: list[tuple[Tensor, State]]) -> tuple[Tensor, ...]:
        """Adagrad directions ``g (a + e)^(-1/2)`` for 1-D parameters, updating ``a`` (an EMA
        with ``statistics_decay``, bias-corrected; ``g`` the bias-corrected momentum when
        ``momentum`` > 0), as the matrices' statistics and momentum."""
        b1, decay = group["momentum"], group["statistics_decay"]
        for p, st in vectors:
            if "sum_sq" not in st:
                st["sum_sq"] = torch.zeros_like(p)
            if b1 and "momentum" not in st:
                st["momentum"] = torch.zeros_like(p)
        grads = [cast(Tensor, p.grad) for p, _ in vectors]
        accs: list[Tensor] = [st["sum_sq"] for _, st in vectors]
        avg: list[Tensor] | tuple[Tensor, ...]
        if decay is None:
            torch._foreach_addcmul_(accs, grads, grads)
            avg = accs
        else:
            torch._foreach_mul_(accs, decay)
            torch._foreach_addcmul_(accs, grads, grads, 1.0 - decay)
            avg = torch._foreach_mul(accs, [1.0 / (1.0 - decay ** st["step"]) for _, st in vectors])
        if group["eps_relative"]:
            denom = torch._foreach_add(avg, [group["eps"] * a.max() for a in avg])
        else:
            denom = torch._foreach_add(avg, group["eps"])
        torch._foreach_clamp_min_(denom, torch.finfo(accs[0].dtype).tiny)
        torch._foreach_rsqrt_(denom)
        if not b1:
            return torch._foreach_mul(denom, grads)
        ms = [st["momentum"] for _, st in vectors]
        torch._foreach_lerp_(ms, grads, 1.0 - b1)
        torch._foreach_mul_(denom, [1.0 / (1.0 - b1 ** st["step"]) for _, st in vectors])
        return torch._foreach_mul(denom, ms)

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
        ms, vs = update_moments(states, [cast(Tensor, p.grad) for p in params], group["betas"])
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
            classes = self._classes(p)
            parts = []
            for grid in classes:
                d_KxMxN = grid.gather(d2)
                scale_K = _norm_ratio(grid.gather(a2), d_KxMxN)
                parts.append(grid.matrix(d_KxMxN * scale_K[:, None, None], p.dtype))
            updates[p] = assemble(classes, parts).view_as(p)


def _placed_like(t: Tensor, ref: Tensor) -> Tensor:
    """``t`` as a DTensor placed like ``ref`` when ``ref`` is one (FSDP2-sharded parameters),
    else ``t``. Every rank passes the same ``t``."""
    if type(ref).__name__ != "DTensor":
        return t
    from torch.distributed.tensor import distribute_tensor

    dref = cast("DTensor", ref)
    return distribute_tensor(t, dref.device_mesh, dref.placements)


def _norm_ratio(target_KxMxN: Tensor, direction_KxMxN: Tensor) -> Tensor:
    """Per block ``||target|| / ||direction||`` (0 where the direction is zero)."""
    tn = torch.linalg.vector_norm(target_KxMxN, dim=(-2, -1))
    dn = torch.linalg.vector_norm(direction_KxMxN, dim=(-2, -1))
    return torch.where(dn > 0, tn / dn.clamp_min(torch.finfo(dn.dtype).tiny), 0.0)


def regime(knobs: Mapping[str, Any]) -> Regime:
    """With Adam grafting the step has Adam's per-block norm (the AdamW rules); otherwise the
    spectral rule, whose blocks add a per-matrix factor (``param.rules.Rule.block_size``)."""
    if knobs["grafting"] == "adam":
        return family("adam")(knobs)
    return Regime("spectral", "shampoo", block=knobs["max_preconditioner_dim"])


_KNOBS = signature_knobs(Shampoo)
SPEC = OptimizerSpec(
    name="shampoo",
    factory=lambda groups, cfg: Shampoo(groups, **cfg),
    knobs=_KNOBS,
    regime=regime,
    eps=_KNOBS["eps"],  # relative to each statistic's largest eigenvalue (eps_relative)
    eps_power=0,  # relative: scale free
)
