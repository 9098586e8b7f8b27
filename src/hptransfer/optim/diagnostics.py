"""Per-layer optimizer diagnostics read from optimizer state (cheap: one transfer per call).

Keys (``NAME`` from the ``names`` mapping, tensors missing from it are skipped):

* ``underflow/NAME``: fraction of coordinates with ``sqrt(v_hat) < eps``, the regime where an
  Adam-type step stops being scale invariant (parameterizations.md section 5). For Adam,
  AdamW, Adam with parameter scaling, LAMB and the AdamW side of Muon ``v_hat`` is the
  bias-corrected second moment (LAMB: as configured); for ADOPT it is ``v`` itself (ADOPT
  has no bias correction and uses ``max(sqrt(v), eps)``). Not reported for the others (Shampoo's
  ``eps`` regularizes eigenvalues, Adam-atan2 has none, Adafactor's moments are factored).
* ``trust_ratio/NAME``: LAMB's last trust ratio ``phi(||w||) / ||r||``.
* ``clip_rate/NAME``: Sophia's fraction of coordinates where ``min(|m| / max(rho h, eps), 1)``
  is clipped (the "win rate" complement logged by the Sophia paper), at the current state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hptransfer.distributed import full
from hptransfer.optim.adam_ps import AdamPS
from hptransfer.optim.adopt import ADOPT
from hptransfer.optim.lamb import Lamb
from hptransfer.optim.muon import MuonAdamW
from hptransfer.optim.sophia import Sophia

# optimizers whose eps is a floor on sqrt(v_hat) (the underflow diagnostic applies)
_EPS_FLOORED = (torch.optim.Adam, torch.optim.AdamW, AdamPS, ADOPT, Lamb, MuonAdamW)


def optimizer_diagnostics(
    optimizer: torch.optim.Optimizer, names: dict[Tensor, str]
) -> dict[str, float]:
    """Flat per-layer diagnostics (see the module docstring) for ``optimizer``."""
    by_id = {id(p): n for p, n in names.items()}
    keys: list[str] = []
    values: list[Tensor] = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = by_id.get(id(p))
            st = optimizer.state.get(p)
            if name is None or not st:
                continue
            if isinstance(optimizer, Sophia):
                ratio = st["exp_avg"].abs() / (st["hessian"] * group["rho"]).clamp_min(group["eps"])
                keys.append(f"clip_rate/{name}")
                values.append((ratio >= 1.0).float().mean())
                continue
            if isinstance(optimizer, Lamb) and "trust_ratio" in st:
                keys.append(f"trust_ratio/{name}")
                values.append(st["trust_ratio"].float())
            if not isinstance(optimizer, _EPS_FLOORED) or "exp_avg_sq" not in st:
                continue
            v = st["exp_avg_sq"]
            if not isinstance(optimizer, ADOPT) and group.get("bias_correction", True):
                v = v / (1.0 - group["betas"][1] ** st["step"])  # step: int or 0-d tensor
            keys.append(f"underflow/{name}")
            values.append((v.sqrt() < group["eps"]).float().mean())
    if not values:
        return {}
    flat = full(torch.stack([v.to(values[0].device) for v in values])).tolist()  # fsdp: DTensor
    return dict(zip(keys, flat))
