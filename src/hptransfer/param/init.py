"""Where each parameter's init starts from (the anchor) and what it starts at.

Three anchors, for a parameter of role input / hidden / output with init exponent b, per-role
(or per-name) constant s, growing dimension n = m n0:

    absolute ([E])       re-sampled  w ~ N(0, (s n^-b)^2)
    relative             re-sampled  w ~ N(0, (s n0^-b_sp m^-b)^2)     (SP at m = 1)
    model (microsoft/mup) rescaled   w <- w * (s rms0 m^-b) / rms(w)

where rms0 is the root mean square of the parameter as the model itself initialized it at base
width (`measure_init` on the model built at base width). The model anchor keeps the model's
own init per parameter and takes only the width dependence from the rule: a Linear(768, width)
first layer keeps its 0.02, a conv stem its kaiming init, a zero-initialized readout stays zero.
It rescales the tensor the model drew instead of drawing a new one, so at base width (m = 1,
s = 1) the parameterized model IS the model, bit for bit.

Biases (the ``bias`` of a module whose ``weight`` has a scaled role) start at a width-independent
size, their size at base width (Tensor Programs V; microsoft/mup): the model anchor rescales
them to rms0; the others, which do not measure, assume PyTorch's default U(+-fan_in^-1/2) and
multiply by sqrt(fan_in / fan_in0). Every other parameter (norm gains, Mamba's A_log and D, a
ViT class token overridden to vector, fixed tensors) keeps its values.

``init_overrides`` maps fnmatch name patterns to "keep" (the parameter's values stay as they
are), "zero", or a number: the constant s of that parameter (in place of its role's), e.g.
``{"*.A_log": "keep", "lm_head.weight": 0.0}``. The first matching pattern wins.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping

import torch
from torch import nn

from hptransfer.errors import ConfigError
from hptransfer.param.roles import ParamRole, RoleTable

KEEP, ZERO = "keep", "zero"
InitOverride = str | float


@torch.no_grad()
def measure_init(model: nn.Module) -> dict[str, float]:
    """Root mean square of every parameter of ``model`` (every name a tensor is reachable
    under), as float64: the model's own init, e.g. at base width for the model anchor."""
    out: dict[str, float] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = rms(p)
    return out


def rms(p: torch.Tensor) -> float:
    """sqrt(mean(p^2)) in float64 (0.0 for an empty tensor)."""
    return float(p.detach().double().pow(2).mean().sqrt()) if p.numel() else 0.0


def match(name: str, overrides: Mapping[str, InitOverride]) -> InitOverride | None:
    """The first override whose pattern matches ``name``."""
    return next((v for pat, v in overrides.items() if fnmatch.fnmatchcase(name, pat)), None)


def bias_weight(e: ParamRole, roles: RoleTable, scaled: tuple[str, ...]) -> ParamRole | None:
    """The entry of the weight next to bias ``e`` when that weight has a scaled role, else None
    (a ``bias`` of a module whose weight the rule does not scale, or not a bias at all). The
    bias is a vector, or fixed when it does not grow (a readout's)."""
    if e.role not in ("vector", "fixed") or not (e.name == "bias" or e.name.endswith(".bias")):
        return None
    weight = e.name[: -len("bias")] + "weight"
    entry = roles.entries.get(weight)
    return entry if entry is not None and entry.role in scaled else None


def default_bias_ratio(weight: ParamRole) -> float:
    """rms at base width / rms at width of a bias under PyTorch's default init
    U(+-fan_in^-1/2): sqrt(fan_in / fan_in0), 1 where fan_in does not grow (an input layer)."""
    if weight.role == "input":
        return 1.0
    return math.sqrt(weight.n / weight.n_base)


def rescale_factor(
    name: str,
    gain: float,
    current: float,
    base: Mapping[str, float] | None,
    bias_of: ParamRole | None,
) -> float:
    """The factor that takes parameter ``name`` from its rms ``current`` to ``gain`` times its
    rms at base width, read from ``base`` (None: the model is at base width itself, so its own
    tensors are the measurement), or for a bias without a measurement from PyTorch's default
    (`default_bias_ratio`)."""
    if current == 0.0:
        return 1.0  # a zero init stays zero
    if base is None:
        return gain
    if name in base:
        return gain * base[name] / current
    if bias_of is not None:
        return gain * default_bias_ratio(bias_of)
    raise ConfigError(
        f"{name}: anchor model needs the model's own init at base width: pass "
        "base_init=measure_init(make_model(base_width)) to parameterize"
    )


def at_base_width(roles: RoleTable) -> bool:
    """Whether every parameter has its base-width shape (the model is built at base width)."""
    return all(e.base_shape is None or e.shape == e.base_shape for e in roles)
