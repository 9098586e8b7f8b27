"""Optimizers for width-scaling experiments, built from a parameterization's param groups.

``build_optimizer(name, param_groups, **hparams)`` is the single entry point. ``param_groups``
come from the parameterization engine: dicts with ``"params"``, ``"lr"`` and optionally
``"eps"``, ``"weight_decay"`` plus metadata (``"role"``, ``"name"``) that every optimizer keeps
untouched in its ``param_groups``. A group's ``lr``/``eps``/``weight_decay`` override the knobs.

Each optimizer is one :class:`~hptransfer.optim.registry.OptimizerSpec` in
:mod:`hptransfer.optim.registry`; its knobs and their defaults live there alone:
``optimizer_knobs(name)`` returns them (``python -c "from hptransfer.optim import
optimizer_knobs; print(optimizer_knobs('lamb'))"``), and ``hptransfer rules --option NAME=VALUE``
names the valid ones on a typo. What the knobs mean (every optimizer also takes
``weight_decay`` and ``wd_mode``):

``sgd``
    ``torch.optim.SGD``: ``momentum``, ``nesterov``; ``foreach`` / ``fused`` (kernel choice,
    see :mod:`~hptransfer.optim.torch_optimizers`). Group ``eps`` is ignored.
``adam`` / ``adamw``
    ``torch.optim.Adam`` / ``AdamW``: ``betas``, ``eps``, ``foreach`` / ``fused``.
``adam_ps``
    :class:`~hptransfer.optim.adam_ps.AdamPS`, Adam times max(floor, rms(w)) per tensor ([E]'s
    "Adafactor" in its main sweeps): ``betas``, ``eps``, ``floor``.
``adafactor``
    ``torch.optim.Adafactor``: ``beta2_decay``, ``d`` (update clipping), ``eps2``
    (parameter-scale floor), ``eps`` (floor on sqrt of the factored second moment; None means
    the dtype's machine epsilon), ``foreach``. A group's float ``eps`` becomes torch's ``eps1``.
``adam_atan2``
    :class:`~hptransfer.optim.adam_atan2.AdamAtan2`: ``betas``, ``a``, ``b``; no epsilon (group
    ``eps`` ignored).
``adopt``
    :class:`~hptransfer.optim.adopt.ADOPT`: ``betas``, ``eps``, ``clip_exponent`` (None:
    unclipped ADOPT).
``lamb``
    :class:`~hptransfer.optim.lamb.Lamb`: ``betas``, ``eps``, ``clamp`` (None: identity),
    ``bias_correction``.
``sophia``
    :class:`~hptransfer.optim.sophia.Sophia`: ``variant`` ("g" or "h"), ``betas``, ``rho``,
    ``curvature_interval``, ``eps``.
``shampoo``
    :class:`~hptransfer.optim.shampoo.Shampoo`: ``eps``, ``eps_relative`` (eps times each
    statistic's largest eigenvalue), ``max_preconditioner_dim``, ``precondition_frequency``
    (roots on steps 1 to k, then every k steps), ``normalize`` ("clip": each block's step at
    most ``lr`` in spectral norm; "spectral": exactly ``lr``; None: plain Shampoo),
    ``precondition_dtype`` (the preconditioning product for float32 parameters), ``momentum``
    (> 0: precondition the gradient's bias-corrected EMA), ``statistics_decay`` (None: summed
    statistics; a float: their bias-corrected EMA), ``grafting`` ("adam" to graft Adam's
    per-block norm), ``betas`` and ``graft_eps`` (grafting).
``muon``
    :class:`~hptransfer.optim.muon.MuonAdamW`: ``momentum``, ``nesterov``, ``ns_steps``,
    ``adjust_lr_fn`` (Muon's per-matrix LR factor, which the width rule puts into the LR),
    ``eps`` and ``betas``: those of its AdamW part (``momentum`` is Muon's), so a config's
    ``optimizer.betas`` and ``optimizer.momentum`` mean the same as for AdamW and SGD.

Weight decay (``weight_decay``; a group's ``"weight_decay"`` overrides it; see
:mod:`hptransfer.optim.decay`): ``wd_mode="coupled"`` shrinks ``w *= 1 - lr * wd`` with the
group's lr, except that ``sgd`` and ``adam`` use torch's L2 form (``g += wd * w``) and ``lamb``
puts ``wd * w`` inside the trust-ratio update as in the LAMB paper; ``"independent"`` shrinks
``w *= 1 - wd * lr / initial_lr`` (the schedule, not the per-layer factor).

This package imports no torch: the optimizer modules are imported when one is built.
"""

from __future__ import annotations

from typing import Any

from hptransfer.errors import ConfigError
from hptransfer.optim import registry

#: The weight-decay modes (``hptransfer.optim.decay``).
WD_MODES = ("coupled", "independent")

#: The optimizer names (a live view of the registry).
OPTIMIZERS = registry.NAMES

_COMMON = {"weight_decay": 0.0, "wd_mode": "coupled"}


def optimizer_knobs(name: str) -> dict[str, Any]:
    """Return the knobs of optimizer ``name`` with their defaults."""
    return {**registry.get(name).knobs, **_COMMON}


def build_optimizer(name: str, param_groups: list[dict[str, Any]], **hparams: Any) -> Any:
    """Build optimizer ``name`` (a ``torch.optim.Optimizer``) over ``param_groups`` with knobs
    ``hparams``.

    Raises ``ConfigError`` for an unknown name, an unknown knob or an unknown ``wd_mode``,
    ``ValueError`` for a group without ``lr``. The groups are copied (shallow); metadata keys
    are kept in the optimizer's groups.
    """
    spec = registry.get(name)
    knobs = {**spec.knobs, **_COMMON}
    unknown = sorted(set(hparams) - set(knobs))
    if unknown:
        raise ConfigError(
            f"unknown knob(s) {', '.join(unknown)} for optimizer {name!r}; "
            f"valid: {', '.join(sorted(knobs))}"
        )
    cfg = {**knobs, **hparams}
    if cfg["wd_mode"] not in WD_MODES:
        raise ConfigError(f"unknown wd_mode {cfg['wd_mode']!r}; valid: {', '.join(WD_MODES)}")
    groups = [dict(g) for g in param_groups]
    for i, g in enumerate(groups):
        if "lr" not in g:
            raise ValueError(f"param group {i} ({g.get('name', 'unnamed')}) has no 'lr'")
        g["params"] = list(g["params"])
        g.setdefault("weight_decay", cfg["weight_decay"])
        g["wd_mode"] = cfg["wd_mode"]
    del cfg["wd_mode"], cfg["weight_decay"]
    return spec.factory(groups, cfg)


__all__ = ["OPTIMIZERS", "WD_MODES", "build_optimizer", "optimizer_knobs"]
