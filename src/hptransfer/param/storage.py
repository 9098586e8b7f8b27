"""Which dim of a parameter is fan_in, from the type of the module that owns it.

The fallback of `roles` when no forward pass is traced (or the pass never reaches a parameter):
nn.Linear, convolutions, RNNs and nn.MultiheadAttention store (fan_out, fan_in, ...);
nn.Embedding / EmbeddingBag, transposed convolutions and transformers' Conv1D store
(fan_in, fan_out, ...). Fans are per matrix: a grouped convolution's are per group times the
kernel's receptive field, and its groups count matrices. A tensor of 2 or more dims on any other
module has no known order ("unknown": refused by name when it grows, unless overridden).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn


def _order(module: nn.Module, pname: str) -> str | None:
    """How ``module`` stores its parameter ``pname``: "out_in" ((fan_out, fan_in, *kernel)),
    "in_out" ((fan_in, fan_out)), or None when the module type does not say."""
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and pname == "weight":
        return "in_out"
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and pname == "weight":
        return "in_out"  # (in, out / groups, *kernel)
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and pname == "weight":
        return "out_in"
    if isinstance(module, nn.RNNBase) and pname.startswith("weight_"):
        return "out_in"  # (gates * hidden, input) and (gates * hidden, hidden)
    if isinstance(module, nn.MultiheadAttention) and pname.endswith("_weight"):
        return "out_in"  # in_proj_weight (3 * embed, embed), q/k/v_proj_weight
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2
        return "in_out"
    return None


@dataclass(frozen=True)
class Reading:
    """How one parameter is used at one width, reduced to what its role needs."""

    kind: str
    """"matrix" (contracted or gathered, or stored as a known layer's weight: fans per
    matrix), "elementwise" (broadcast onto activations or through a nonlinearity: a vector
    whatever its rank) or "unknown" (no rule fits)."""
    fans: tuple[int, int, int]
    """(fan_in, fan_out, matrices) for a matrix; (numel, numel, 1) otherwise."""
    evidence: str


def read_storage(module: nn.Module, pname: str, shape: tuple[int, ...]) -> Reading:
    """The reading from the owning module's type alone (no trace, or the forward pass never
    reached the parameter). A tensor of 2 or more dims on an unknown module is "unknown"."""
    numel = math.prod(shape)
    if len(shape) < 2:
        return Reading("elementwise", (numel, numel, 1), "1-D")
    order = _order(module, pname)
    if order is None:
        return Reading("unknown", (shape[-1], shape[-2], math.prod(shape[:-2])), "")
    evidence = f"{type(module).__name__} storage ({'out, in' if order == 'out_in' else 'in, out'})"
    if isinstance(module, nn.modules.conv._ConvNd):
        receptive, groups = math.prod(shape[2:]), module.groups
        if order == "in_out":
            return Reading(
                "matrix", (shape[0] // groups * receptive, shape[1] * receptive, groups), evidence
            )
        return Reading(
            "matrix", (shape[1] * receptive, shape[0] // groups * receptive, groups), evidence
        )
    if order == "in_out":
        return Reading("matrix", (shape[0], shape[1], 1), evidence)
    return Reading("matrix", (shape[1], shape[0], 1), evidence)
