"""Apply a rule to a model: re-initialize, install forward multipliers, build param groups.

For each parameter of role input / hidden / output with exponents (a, b, c, g) and per-role
constants gamma (LR) and s (init scale):

    anchor "absolute" ([E]):   multiplier n^-a,   init std s * n^-b
    anchor "relative" (mup):   multiplier m^-a,   init std s * n0^-b_sp * m^-b
    LR  beta * gamma * m^-c          per-layer epsilon  eps * m^-g  (Sophia m^-2g, Shampoo 1)

(blocked Shampoo: the LR of each matrix also x sqrt(blocks at base width / blocks), see
`Rule.block_size`; an optimizer that scales a parameter's step itself, Muon's
sqrt(max(1, fan_out / fan_in)) on hidden matrices, has that factor in the LR here, its epsilon
in place of the group's and coupled weight decay divided by the factor, and the param group says
so (`registry.OWN_FACTOR_KEY`): the table is the LR and epsilon that run)

with n the layer's growing dimension, n0 its value at base width, m = n / n0 and b_sp the SP
init exponent, so that with the relative anchor every parameterization is SP at m = 1. The
model anchor rescales the model's own init instead: std rms0 * m^-b, rms0 the parameter's own
at base width (`hptransfer.param.init`, which also says what biases and other vectors start at).
Vectors take the vector row's LR.

form "folded" moves each multiplier into the init, the LR and epsilon (the symmetry
(a, b, c) -> (a + t, b - t, c - k t)): std * mult, LR * mult^k, eps / mult (Sophia: / mult^2;
Shampoo's relative eps: unchanged; see rules.eps_power), coupled weight
decay / mult^k. It needs no hooks, so it works for any module type.

Multipliers are forward hooks on the owning module (nn.Linear, convolutions: the input is
scaled, which also keeps biases unscaled; nn.Embedding: the output; any other parameter: it
reads as mult times itself during its owner's forward, `ScaleParam`), never edits of the model:
one hook per module however many names it has, and hooks are picklable objects (`ScaleInput`,
`ScaleOutput`, `ScaleParam`), so torch.save(model) and copy.deepcopy keep them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from hptransfer.config import ANCHORS, EPS_MODES, FORMS, check_init_overrides
from hptransfer.errors import ConfigError
from hptransfer.optim import registry
from hptransfer.param.init import (
    KEEP,
    ZERO,
    InitOverride,
    at_base_width,
    bias_weight,
    match,
    rescale_factor,
    rms,
)
from hptransfer.param.multipliers import install_multiplier, scale_branches
from hptransfer.param.roles import RoleTable
from hptransfer.param.rules import (
    SP_B,
    RoleRule,
    Rule,
    base_eps,
    depth_lr_factor,
    depth_multiplier,
    eps_factor,
    eps_power,
)

SCALED = ("input", "hidden", "output")


@dataclass(frozen=True)
class ParamSpec:
    """What the rule does to one parameter; one row of `hptransfer rules --model ...`."""

    name: str
    role: str
    fan_in: int
    fan_out: int
    width_mult: float
    init_std: float | None
    """Std of a re-sampled init; None: not re-sampled (see init_gain)."""
    multiplier: float
    """Forward multiplier applied by a hook (1.0 in folded form)."""
    lr_factor: float
    """This parameter's LR divided by the base LR beta."""
    eps: float | None
    """Epsilon for optimizers that have one; None otherwise."""
    weight_decay: float
    own_factor: bool = False
    """Whether lr_factor (and eps, weight_decay) include the optimizer's own factor."""
    init_gain: float | None = None
    """The parameter starts at its own init at base width times this, its tensor rescaled, not
    re-sampled (anchor model; biases); None with init_std None: its values are kept."""


@dataclass
class Parameterization:
    """The outcome of `parameterize`: the per-parameter table, param groups and hooks."""

    rule: Rule
    table: dict[str, ParamSpec]
    param_groups: list[dict[str, Any]]
    lr: float
    """The base LR beta the param groups were made for."""
    handles: list[RemovableHandle] = field(default_factory=list, repr=False)

    def regroup(self, lr: float) -> list[dict[str, Any]]:
        """The param groups for base LR ``lr`` instead of ``self.lr``: each group's LR times
        lr / self.lr (per-role factors, depth scaling and all), the same parameters and keys;
        the model, its multipliers and ``self.param_groups`` stay as they are. An LR sweep in
        a plain loop builds one optimizer per LR from these, without parameterizing again."""
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"regroup: the base LR must be a positive number, got {lr!r}")
        scale = lr / self.lr
        return [
            {**g, "params": list(g["params"]), "lr": g["lr"] * scale} for g in self.param_groups
        ]

    def remove(self) -> None:
        """Remove the forward multipliers from the model."""
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def rows(self) -> list[dict[str, Any]]:
        return [vars(s).copy() for s in self.table.values()]

    def format(self) -> str:
        head = ("name", "role", "fan_in", "fan_out", "init_std", "multiplier", "lr_factor", "eps")
        rows = [head]
        for s in self.table.values():
            rows.append(
                (
                    s.name,
                    s.role,
                    str(s.fan_in),
                    str(s.fan_out),
                    _init_cell(s),
                    f"{s.multiplier:.4g}",
                    f"{s.lr_factor:.4g}",
                    "-" if s.eps is None else f"{s.eps:.3g}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _init_cell(s: ParamSpec) -> str:
    if s.init_std is not None:
        return f"{s.init_std:.4g}"
    return "keep" if s.init_gain is None else f"own x {s.init_gain:.4g}"


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    out: dict[str, tuple[nn.Module, str]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, _ in module.named_parameters(recurse=False):
            out.setdefault(f"{mname}.{pname}" if mname else pname, (module, pname))
    return out


def compute_specs(
    roles: RoleTable,
    rule: Rule,
    *,
    eps: float | None = None,
    weight_decay: float = 0.0,
    wd_mode: str = "coupled",
    anchor: str = "relative",
    form: str = "multiplier",
    eps_mode: str = "constant",
    init_scale: dict[str, float] | None = None,
    init_overrides: Mapping[str, InitOverride] | None = None,
) -> dict[str, ParamSpec]:
    """The per-parameter table, without touching any model (used by `hptransfer rules`).
    ``init_scale`` is the constant s per role, ``init_overrides`` per name pattern
    (`hptransfer.param.init`)."""
    for key, value, choices in (
        ("anchor", anchor, ANCHORS),
        ("form", form, FORMS),
        ("eps_mode", eps_mode, EPS_MODES),
    ):
        if value not in choices:
            raise ConfigError(f"{key}={value!r}; choose one of {', '.join(choices)}")
    init_scale = init_scale or {}
    overrides = check_init_overrides(init_overrides)
    eps0 = base_eps(rule.optimizer, eps, eps_mode)
    own_factor = registry.get(rule.optimizer).own_factor
    specs = {}
    for e in roles:
        if e.tied_to is not None and roles[e.tied_to].role == e.role:
            continue  # one tensor, one entry: it was handled under its first name
        m = e.width_mult
        # every role but "fixed" has a row, and "fixed" reads none of its exponents
        r = cast(RoleRule, rule.roles.get(e.role))
        wanted = match(e.name, overrides)
        is_bias = bias_weight(e, roles, SCALED) is not None
        if isinstance(wanted, (int, float)) and not (e.role in SCALED or is_bias):
            raise ConfigError(
                f"init_overrides: {e.name} ({e.role}) has no init rule to set a constant for; "
                'use "keep" or "zero"'
            )
        std: float | None = None
        gain: float | None = None
        mult = 1.0
        if e.role in SCALED:
            n = float(e.n) if anchor == "absolute" else m
            mult = n ** -float(r.a)
            s = float(wanted) if isinstance(wanted, (int, float)) else init_scale.get(e.role, 1.0)
            if anchor == "model":
                gain = s * n ** -float(r.b)
            else:
                std = s * n ** -float(r.b)
                if anchor == "relative":
                    std *= float(e.n_base) ** -float(SP_B[e.role])
        elif is_bias:  # a bias keeps its base-width size
            gain = float(wanted) if isinstance(wanted, (int, float)) else 1.0
        if wanted == KEEP:
            std, gain = None, None
        elif wanted == ZERO:
            std, gain = 0.0, None
        if e.role == "fixed":
            lr_factor, g = 1.0, 0.0
        else:
            lr_factor, g = r.gamma * m ** -float(r.c), float(r.g)
        if rule.block_size is not None and e.role in SCALED:
            if e.base_shape is None:
                raise ValueError(
                    f"{e.name}: the blocked {rule.optimizer} rule needs the parameter's shape "
                    "at base width; build the roles table with infer_roles / roles_from_factory"
                )
            lr_factor *= rule.block_lr_factor(e.shape, e.base_shape)
        p_eps = None if eps0 is None else eps0 * eps_factor(rule.optimizer, g, m, eps_mode)
        wd = weight_decay
        if form == "folded" and mult != 1.0:
            std = None if std is None else std * mult
            gain = None if gain is None else gain * mult
            lr_factor *= mult**rule.k
            if p_eps is not None:
                p_eps /= mult ** eps_power(rule.optimizer)
            if wd_mode == "coupled":
                wd = wd / mult**rule.k
            mult = 1.0
        own = own_factor(e.role, e.shape, rule.knobs)
        if own is not None:  # the optimizer's own factor: in the LR, never applied twice
            lr_factor *= own.lr
            p_eps = own.eps if own.eps is not None else p_eps
            if wd_mode == "coupled":  # coupled decay w *= 1 - lr * wd uses the group's LR
                wd = wd / own.lr
        specs[e.name] = ParamSpec(
            e.name,
            e.role,
            e.fan_in,
            e.fan_out,
            m,
            std,
            mult,
            lr_factor,
            p_eps,
            wd,
            own is not None,
            gain,
        )
    return specs


def _untie_configs(model: nn.Module) -> None:
    """Set ``tie_word_embeddings`` False in every transformers config inside ``model`` (and its
    text config), so that a later ``tie_weights()`` (``from_pretrained`` calls it) does not tie
    the head to the embedding again."""
    for module in model.modules():
        config = getattr(module, "config", None)
        text = getattr(config, "get_text_config", None)
        for c in (config, text() if callable(text) else None):
            if c is not None and getattr(c, "tie_word_embeddings", False):
                c.tie_word_embeddings = False


@torch.no_grad()
def parameterize(
    model: nn.Module,
    roles: RoleTable,
    rule: Rule,
    *,
    lr: float,
    eps: float | None = None,
    weight_decay: float = 0.0,
    wd_mode: str = "coupled",
    anchor: str = "relative",
    form: str = "multiplier",
    eps_mode: str = "constant",
    init_scale: dict[str, float] | None = None,
    init_overrides: Mapping[str, InitOverride] | None = None,
    base_init: Mapping[str, float] | None = None,
    init: bool = True,
    generator: torch.Generator | None = None,
) -> Parameterization:
    """Re-initialize ``model`` in place per ``rule``, install its forward multipliers, and
    return the param groups (``lr``, ``eps``, ``weight_decay``, ``role``, ``name`` per group)
    for any torch optimizer. ``lr`` is the base LR beta. Parameters are re-initialized in the
    roles table's order from ``generator``, so a seed fixes the init; ``init=False`` keeps the
    model's values (a trained or loaded model: only multipliers and param groups change).
    ``anchor="model"`` rescales the model's own tensors instead (`hptransfer.param.init`); at a
    width other than the base it needs ``base_init``, `measure_init` of the model built at base
    width.
    """
    owners = _owners(model)
    missing = [e.name for e in roles if e.name not in owners]
    if missing:
        raise ValueError(f"roles table names parameters the model lacks: {missing[:5]}")
    untied = [e.name for e in roles if e.tied_to is not None and roles[e.tied_to].role != e.role]
    for name in untied:  # untie first, so each name owns its tensor
        module, pname = owners[name]
        setattr(module, pname, nn.Parameter(getattr(module, pname).detach().clone()))
    if untied:
        _untie_configs(model)
    specs = compute_specs(
        roles,
        rule,
        eps=eps,
        weight_decay=weight_decay,
        wd_mode=wd_mode,
        anchor=anchor,
        form=form,
        eps_mode=eps_mode,
        init_scale=init_scale,
        init_overrides=init_overrides,
    )
    # at base width the model's own tensors are the base-width measurement
    base = None if at_base_width(roles) else (base_init if base_init is not None else {})
    handles = []
    hooked: set[tuple[int, str]] = set()
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for name, s in specs.items():
        module, pname = owners[name]
        p = getattr(module, pname)
        if init and s.init_std is not None:
            if s.init_std == 0.0:
                p.zero_()
            else:
                p.normal_(0.0, s.init_std, generator=generator)
        elif init and s.init_gain is not None:
            weight = bias_weight(roles[name], roles, SCALED)
            factor = rescale_factor(name, s.init_gain, rms(p), base, weight)
            if factor != 1.0:
                p.mul_(factor)
        if s.multiplier != 1.0:
            users = [name] + [e.name for e in roles if e.tied_to == name and e.name not in specs]
            for user in users:  # a tied tensor used by a second module needs the same hook
                umod, upname = owners[user]
                if (id(umod), upname) not in hooked:  # a module under two names: one hook
                    hooked.add((id(umod), upname))
                    handles += install_multiplier(umod, upname, user, s.multiplier)
        key = (s.role, s.lr_factor, s.eps, s.weight_decay, s.own_factor)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": lr * s.lr_factor,
                "weight_decay": s.weight_decay,
                "role": s.role,
                "name": s.role,
                "param_names": [],
            }
            if s.eps is not None:
                groups[key]["eps"] = s.eps
            if s.own_factor:
                groups[key][registry.OWN_FACTOR_KEY] = True
            if eps_mode == "per_layer" and rule.optimizer == "shampoo":
                groups[key]["eps_relative"] = True  # scale free (see rules.EPS_POWER)
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    group_list = list(groups.values())
    counts: dict[str, int] = {}
    for g in group_list:
        counts[g["role"]] = counts.get(g["role"], 0) + 1
    seen: dict[str, int] = {}
    for g in group_list:
        if counts[g["role"]] > 1:
            seen[g["role"]] = seen.get(g["role"], 0) + 1
            g["name"] = f"{g['role']}{seen[g['role']]}"
    return Parameterization(rule, specs, group_list, lr, handles)


def scale_depth(
    par: Parameterization,
    model: nn.Module,
    depth: int,
    depth_base: int,
    exponent: float,
    *,
    branches: list[str],
    scale_lr: bool = True,
) -> None:
    """Residual-branch multipliers (depth_base / depth)^exponent on ``model`` (hooks kept in
    ``par.handles``) and, with ``scale_lr``, the hidden groups' LR times `depth_lr_factor`
    (edits ``par.param_groups``: call it before building the optimizer)."""
    mult = depth_multiplier(depth, depth_base, exponent)
    par.handles += scale_branches(model, branches, mult)
    if scale_lr:
        factor = depth_lr_factor(par.rule.family, depth, depth_base, exponent)
        for group in par.param_groups:
            if group["role"] == "hidden":
                group["lr"] *= factor
