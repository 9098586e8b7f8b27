"""Per-layer optimizer diagnostics read from optimizer state (cheap: one transfer per call).

Which diagnostics an optimizer has is part of its spec (``OptimizerSpec.diagnostics``, see
:mod:`hptransfer.optim.registry`); this module holds the probes and the loop. Keys (``NAME``
from the ``names`` mapping, tensors missing from it are skipped):

* ``underflow/NAME``: fraction of coordinates with ``sqrt(v_hat) < eps``, the regime where an
  Adam-type step stops being scale invariant (parameterizations.md section 5). For Adam,
  AdamW, Adam with parameter scaling, LAMB and the AdamW side of Muon ``v_hat`` is the
  bias-corrected second moment (LAMB: as configured, :func:`underflow`); for ADOPT it is ``v``
  itself (ADOPT has no bias correction and uses ``max(sqrt(v), eps)``, :func:`underflow_raw`).
  Not reported for the others (Shampoo's ``eps`` regularizes eigenvalues, Adam-atan2 has none,
  Adafactor's moments are factored).
* ``trust_ratio/NAME``: LAMB's last trust ratio ``phi(||w||) / ||r||``.
* ``clip_rate/NAME``: Sophia's fraction of coordinates where ``min(|m| / max(rho h, eps), 1)``
  is clipped (the "win rate" complement logged by the Sophia paper), at the current state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

from hptransfer.optim import registry

_P = TypeVar("_P", bound=Tensor)  # a parameter: nn.Parameter or a plain tensor


def underflow(group: Mapping[str, Any], st: Mapping[str, Any]) -> tuple[str, Tensor] | None:
    """Fraction of ``sqrt(v_hat) < eps`` (bias-corrected unless the group turns it off)."""
    if "exp_avg_sq" not in st:
        return None  # e.g. Muon's Newton-Schulz groups
    v = st["exp_avg_sq"]
    if group.get("bias_correction", True):
        v = v / (1.0 - group["betas"][1] ** st["step"])  # step: int or 0-d tensor
    return "underflow", (v.sqrt() < group["eps"]).float().mean()


def underflow_raw(group: Mapping[str, Any], st: Mapping[str, Any]) -> tuple[str, Tensor] | None:
    """Fraction of ``sqrt(v) < eps`` for an optimizer without bias correction (ADOPT)."""
    return "underflow", (st["exp_avg_sq"].sqrt() < group["eps"]).float().mean()


def trust_ratio(group: Mapping[str, Any], st: Mapping[str, Any]) -> tuple[str, Tensor] | None:
    """LAMB's last trust ratio (absent before the first step)."""
    return ("trust_ratio", st["trust_ratio"].float()) if "trust_ratio" in st else None


def clip_rate(group: Mapping[str, Any], st: Mapping[str, Any]) -> tuple[str, Tensor] | None:
    """Sophia's fraction of clipped coordinates at the current state."""
    ratio = st["exp_avg"].abs() / (st["hessian"] * group["rho"]).clamp_min(group["eps"])
    return "clip_rate", (ratio >= 1.0).float().mean()


def optimizer_diagnostics(
    name: str,
    optimizer: torch.optim.Optimizer,
    names: Mapping[_P, str],
    gather: Callable[[Tensor], Tensor] = lambda t: t,
) -> dict[str, float]:
    """Flat per-layer diagnostics of optimizer ``name`` (see the module docstring).
    ``gather`` turns the stacked values into a plain tensor (``distributed.full`` under FSDP,
    where the statistics are sharded DTensors)."""
    probes = registry.get(name).diagnostics
    by_id = {id(p): n for p, n in names.items()}
    keys: list[str] = []
    values: list[Tensor] = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            pname = by_id.get(id(p))
            st = optimizer.state.get(p)
            if pname is None or not st:
                continue
            for probe in probes:
                out = probe(group, st)
                if out is not None:
                    keys.append(f"{out[0]}/{pname}")
                    values.append(out[1])
    if not values:
        return {}
    flat = gather(torch.stack([v.to(values[0].device) for v in values])).tolist()
    return dict(zip(keys, flat))
