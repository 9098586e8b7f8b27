"""Alignment exponents alpha, omega, u of [E] (parameterizations.md §3), measured in training.

For a linear layer z = W x with W = W0 + dW and x = x0 + dx (dx: the change of the layer's
INPUT on a fixed batch),

    W x = W0 x0 + dW x0 + W0 dx + dW dx,

and each update term is compared with the product of the RMS sizes of its two factors:

    alpha = log_n( rms(dW x0) / (rms(dW) rms(x0)) )
    omega = log_n( rms(W0 dx) / (rms(W0) rms(dx)) )
    u     = log_n( rms(dW dx) / (rms(dW) rms(dx)) )

with rms over all entries and n the layer's fan_in (the log base). A sum of n independent
terms grows like sqrt(n) (exponent 1/2); a rank-1 dW = s a x0^T lined up with its input gives
n (exponent 1). The ratios do not depend on a scalar factor on W or x, so forward multipliers
(whichever side of the layer they act on) leave the exponents unchanged. The exponents carry an
O(1 / log n) bias from constants (e.g. dx along the top singular vector of a Gaussian W0 gives
omega = 1/2 + log_n 2), so compare them across widths, not to 1/2 and 1 at small n.

`alignment_exponents` is the math on tensors; `AlignmentProbe` records x0 and W0 of every
``nn.Linear`` of a model on a fixed batch and measures the exponents later (an extra forward
pass on that batch, then three float64 matmuls per layer). The offline side (a stored run's
exponents averaged per role, for the "measured" alignment preset) is
`hptransfer.analysis.alignment`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

EXPONENTS = ("alpha", "omega", "u")
PREFIX = "align"


def _rms(x: Tensor) -> Tensor:
    return x.pow(2).mean().sqrt()


def alignment_ratio(a: Tensor, b: Tensor, product: Tensor) -> float:
    """rms(product) / (rms(a) * rms(b)); nan when a factor is zero or anything is non-finite."""
    denom = _rms(a) * _rms(b)
    ratio = (_rms(product) / denom).item() if denom > 0 else math.nan
    return ratio if math.isfinite(ratio) and ratio > 0 else math.nan


def alignment_exponents(
    w0_OxI: Tensor, w_OxI: Tensor, x0_NxI: Tensor, x_NxI: Tensor
) -> dict[str, float]:
    """alpha, omega and u of one linear layer (weights out x in, inputs tokens x in).

    Computed in float64. An exponent whose factors vanish (no update yet, an input that does
    not change, such as a layer fed by a frozen embedding) is nan.
    """
    fan_in = w0_OxI.shape[1]
    if fan_in < 2:
        raise ValueError(f"alignment needs fan_in >= 2 (the log base), got {fan_in}")
    w0, x0 = w0_OxI.double(), x0_NxI.double()
    dw = w_OxI.double() - w0
    dx = x_NxI.double() - x0
    log_n = math.log(fan_in)
    ratios = {
        "alpha": alignment_ratio(dw, x0, x0 @ dw.T),
        "omega": alignment_ratio(w0, dx, dx @ w0.T),
        "u": alignment_ratio(dw, dx, dx @ dw.T),
    }
    return {k: math.log(r) / log_n for k, r in ratios.items()}


def metric_key(exponent: str, param_name: str) -> str:
    """The metrics.jsonl key of one exponent of one layer, e.g. ``align/alpha/head.weight``."""
    return f"{PREFIX}/{exponent}/{param_name}"


class AlignmentProbe:
    """Alignment exponents of every ``nn.Linear`` of ``model`` on a fixed batch.

    Construction runs ``forward()`` once (no grad) and keeps each layer's weight W0 and input x0
    (float64 copies; layers fed the same tensor, such as q, k and v, share one copy). `measure`
    runs ``forward()`` again and returns ``{align/<exponent>/<weight name>: value}``, leaving
    out nan values. Hooks exist only while ``forward()`` runs, so the probe costs nothing
    between measurements and does not change training (no RNG, no autograd state).

    Args:
        model: the model; its ``nn.Linear`` modules with fan_in >= 2 are probed.
        forward: runs the model on the fixed batch (e.g. ``lambda: model(x0)``).
    """

    def __init__(self, model: nn.Module, forward: Callable[[], Any]) -> None:
        self.model = model
        self.forward = forward
        self.layers = {
            f"{name}.weight" if name else "weight": module
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module.in_features >= 2
        }
        if not self.layers:
            raise ValueError("alignment probe: the model has no nn.Linear layer with fan_in >= 2")
        self.w0 = {n: m.weight.detach().double().clone() for n, m in self.layers.items()}
        self.x0 = self._inputs()

    @torch.no_grad()
    def _inputs(self) -> dict[str, Tensor]:
        """Each layer's input on the fixed batch, flattened to tokens x fan_in, in float64."""
        captured: dict[str, Tensor] = {}
        # one float64 copy per distinct input tensor; the tensor is kept alive alongside so its
        # id cannot be reused by a later input during this forward pass
        by_tensor: dict[int, tuple[Tensor, Tensor]] = {}

        def hook_for(name: str):
            def hook(module: nn.Module, args: tuple) -> None:
                x = args[0]
                if id(x) not in by_tensor:
                    by_tensor[id(x)] = (x, x.detach().reshape(-1, x.shape[-1]).double())
                captured[name] = by_tensor[id(x)][1]

            return hook

        handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in self.layers.items()]
        was_training = self.model.training
        try:
            self.model.eval()
            self.forward()
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        missing = sorted(set(self.layers) - set(captured))
        if missing:
            raise ValueError(f"alignment probe: forward() did not call {missing[:3]}")
        return captured

    def measure(self) -> dict[str, float]:
        """Exponents of every probed layer at the current weights (see the class docstring)."""
        x_now = self._inputs()
        out: dict[str, float] = {}
        with torch.no_grad():
            for name, module in self.layers.items():
                values = alignment_exponents(
                    self.w0[name], module.weight.detach(), self.x0[name], x_now[name]
                )
                for exponent, value in values.items():
                    if math.isfinite(value):
                        out[metric_key(exponent, name)] = value
        return out
