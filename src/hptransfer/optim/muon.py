r"""Muon on hidden matrices, AdamW on everything else, as one optimizer.

Groups whose ``"role"`` is ``"hidden"`` and whose parameters are all 2-D go to
``torch.optim.Muon``:

.. math::

    B_t &= \mu B_{t-1} + (1-\mu) g_t, \qquad \tilde B_t = (1-\mu) g_t + \mu B_t
        \ \text{(Nesterov)} \\
    O_t &= \mathrm{NS}_5(\tilde B_t) \quad\text{(quintic Newton-Schulz, coefficients
        (3.4445, -4.7750, 2.0315), on } \tilde B_t / \max(\lVert \tilde B_t\rVert_F, 10^{-7})) \\
    w &\leftarrow w (1 - \eta\lambda) - \eta'\, O_t

with ``eta' = eta * sqrt(max(1, fan_out / fan_in))`` (``adjust_lr_fn="original"``, width-free
at constant LR) or ``eta * 0.2 * sqrt(max(fan_out, fan_in))`` (``"match_rms_adamw"``: scale the
hidden LR by ``1/sqrt(width_mult)``; never stack both). That factor is Muon's own
(:func:`lr_factor`); the width rule owns it: ``param.apply.compute_specs`` puts it into each
matrix's LR (and divides coupled weight decay by it, as torch decays with the unadjusted LR),
so ``hptransfer rules --model`` prints the LR that runs, and marks the param group
(``registry.OWN_FACTOR_KEY``); such groups run torch's Muon with the LR as given. Groups
without the mark (built by hand) get torch's adjustment, as plain ``torch.optim.Muon`` does.
torch runs the Newton-Schulz iteration in bfloat16 whatever the parameter dtype; knob
``ns_dtype`` ("auto": bfloat16 on accelerators, float32 on CPU, where bfloat16 matmuls can be
~50x slower than float32 ones; "bfloat16": torch's Muon exactly; "float32"). All other
groups (routing uses ``"role"`` only, never parameter names) go to ``torch.optim.AdamW`` with
``adamw_betas`` (``build_optimizer``'s ``betas`` knob) and ``eps``. A group's ``eps`` applies to
AdamW-routed groups; Muon-routed groups use torch's Newton-Schulz normalization floor (1e-7)
instead, which `own_factor` reports as their epsilon.

The object is a single :class:`torch.optim.Optimizer` with one ``param_groups`` list (LR
schedulers scale every group), one ``state``/``state_dict``: the torch optimizers doing the
work share these group dicts and this state.

Weight decay: coupled ``w *= 1 - lr * wd`` (both torch optimizers' form; for Muon groups with
the unadjusted lr) or independent ``w *= 1 - wd * lr / initial_lr`` (see
:mod:`hptransfer.optim.decay`).

Reference: K. Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024);
``torch.optim.Muon``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from hptransfer.errors import ConfigError
from hptransfer.optim.decay import step_with_independent_decay
from hptransfer.optim.diagnostics import underflow
from hptransfer.optim.registry import (
    OWN_FACTOR_KEY,
    OptimizerSpec,
    OwnFactor,
    Regime,
    signature_knobs,
)

#: the epsilon of torch's Newton-Schulz normalization, X / max(||X||_F, eps)
_MUON_NS_EPS = 1e-7
#: an ``adjust_lr_fn`` that torch's Muon leaves unadjusted (any name but its two)
_LR_AS_GIVEN = "as_given"


#: Newton-Schulz dtypes: torch's Muon runs it in bfloat16; "auto" keeps that on accelerators
#: and uses float32 on CPU, where a bfloat16 matmul without bf16 units costs ~50x a float32 one
#: (AMD EPYC, AVX2: 512 x 2048 x 512 in 4.0 s against 0.08 s on one thread).
NS_DTYPES = ("auto", "bfloat16", "float32")


def newton_schulz(update: torch.Tensor, steps: int, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """torch's quintic Newton-Schulz orthogonalization (coefficients (3.4445, -4.7750, 2.0315))
    of a matrix, computed in ``dtype``: X = G / max(||G||_F, eps), then ``steps`` times
    X <- a X + (b A + c A^2) X with A = X X^T, on the wide orientation."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = update.to(dtype)
    wide = update.size(0) > update.size(1)
    if wide:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


class _Float32Muon(torch.optim.Muon):
    """torch's Muon step with the Newton-Schulz iteration in float32 (same state layout)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                ortho = newton_schulz(update, group["ns_steps"], group["eps"], torch.float32)
                fn = group["adjust_lr_fn"]
                scale = lr_factor(tuple(p.shape), fn) if fn in _TORCH_ADJUST else 1.0
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(ortho.to(p.dtype), alpha=-lr * scale)
        return None


def routes_to_muon(group: dict[str, Any]) -> bool:
    """Whether a param group is optimized by Muon (hidden role, all params 2-D)."""
    return group.get("role") == "hidden" and all(p.ndim == 2 for p in group["params"])


class MuonAdamW(torch.optim.Optimizer):
    """Muon for hidden 2-D groups plus AdamW for the rest, presented as one optimizer."""

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: str = "original",
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        wd_mode: str = "coupled",
        ns_dtype: str = "auto",
    ) -> None:
        if ns_dtype not in NS_DTYPES:
            raise ConfigError(f"muon option ns_dtype={ns_dtype!r}; choose one of {NS_DTYPES}")
        self._ns_dtype = ns_dtype
        groups = [dict(g) for g in params]
        self._muon_kw = dict(
            momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn
        )
        self._adamw_kw: dict[str, Any] = dict(betas=adamw_betas, eps=eps)
        for g in groups:
            g["use_muon"] = routes_to_muon(g)
            if g["use_muon"]:
                g["eps"] = _MUON_NS_EPS
                if g.get(OWN_FACTOR_KEY):
                    g["adjust_lr_fn"] = _LR_AS_GIVEN
        super().__init__(groups, dict(lr=lr, weight_decay=weight_decay, wd_mode=wd_mode))
        self._link()

    def _link(self) -> None:
        """(Re)build the torch optimizers over this object's group dicts and state."""
        self._inner: list[torch.optim.Optimizer] = []
        for use_muon, cls, kw in (
            (True, self._muon_class(), self._muon_kw),
            (False, torch.optim.AdamW, self._adamw_kw),
        ):
            groups = [g for g in self.param_groups if g["use_muon"] is use_muon]
            if not groups:
                continue
            inner = cls([{"params": g["params"]} for g in groups], lr=groups[0]["lr"], **kw)
            for mine, theirs in zip(groups, inner.param_groups):
                for key, value in theirs.items():
                    mine.setdefault(key, value)
            inner.param_groups = groups
            inner.state = self.state
            self._inner.append(inner)

    def _muon_class(self) -> type[torch.optim.Muon]:
        """torch's Muon (bfloat16 Newton-Schulz), or its float32 variant (see NS_DTYPES)."""
        dtype = self._ns_dtype
        if dtype == "auto":
            params = [p for g in self.param_groups if g["use_muon"] for p in g["params"]]
            dtype = "float32" if params and params[0].device.type == "cpu" else "bfloat16"
        return torch.optim.Muon if dtype == "bfloat16" else _Float32Muon

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        def inner_step() -> None:
            for inner in self._inner:
                inner.step()

        return step_with_independent_decay(self, inner_step, closure)


#: the ``adjust_lr_fn`` values torch's Muon applies (any other name leaves the LR as given)
_TORCH_ADJUST = ("original", "match_rms_adamw")


def lr_factor(shape: tuple[int, ...], adjust_lr_fn: str) -> float:
    """torch's Muon LR adjustment of a ``(fan_out, fan_in)`` matrix."""
    fan_out, fan_in = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(fan_out, fan_in))
    return math.sqrt(max(1.0, fan_out / fan_in))


def own_factor(role: str, shape: tuple[int, ...], knobs: Mapping[str, Any]) -> OwnFactor | None:
    """Hidden matrices (the ones `routes_to_muon` sends to Muon): the LR adjustment and the
    Newton-Schulz epsilon. Everything else runs AdamW with the group's LR and epsilon."""
    if role != "hidden" or len(shape) != 2:
        return None
    return OwnFactor(lr_factor(shape, knobs["adjust_lr_fn"]), _MUON_NS_EPS)


def regime(knobs: Mapping[str, Any]) -> Regime:
    """Width-free hidden steps (c = 0); "match_rms_adamw" adds 1/sqrt(width_mult) to them."""
    if knobs["adjust_lr_fn"] == "match_rms_adamw":
        return Regime("spectral", "muon_match_rms_adamw")
    return Regime("spectral", "muon")


_KNOBS = signature_knobs(MuonAdamW, skip=("adamw_betas",))
SPEC = OptimizerSpec(
    name="muon",
    factory=lambda groups, cfg: MuonAdamW(groups, adamw_betas=cfg.pop("betas"), **cfg),
    knobs={**_KNOBS, "betas": inspect.signature(MuonAdamW).parameters["adamw_betas"].default},
    regime=regime,
    eps=_KNOBS["eps"],  # of the AdamW part
    own_factor=own_factor,
    diagnostics=(underflow,),  # the AdamW part
)
