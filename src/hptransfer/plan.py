"""The plan of a target model: every parameter's hyperparameters, exported and applied again.

A plan is a run config at the target size (its optimizer.lr is the base LR beta, e.g. the one
`hptransfer predict` recommends) plus, per parameter of the model that config builds, what the
rule does to it:

    role, fan_in, fan_out, width_mult, init std, forward multiplier,
    lr = beta * lr_factor (x the depth factor for hidden parameters when param.depth_exponent
    is set), eps, weight decay

and where the numbers came from (``provenance``: the sweep, the setting, keep / extrapolate,
the interval). The table is what `parameterize` computes for that config, the same path a
training run takes (`hptransfer.train.parameterize_run`), so the file shows what runs.

``load_plan(path).apply(model, init=True)`` re-initializes the user's model (``init=False``
keeps its values), installs the forward multipliers and returns the param groups for any
torch optimizer; it refuses a model whose parameters do not match the plan, and a plan whose
table no longer matches what this version of the rules computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hptransfer.config import ConfigError, RunConfig, from_dict

FORMAT = "hptransfer-plan/1"
"""The value of a plan file's ``format`` key."""

_COMPARED = ("role", "init_std", "multiplier", "lr", "eps", "weight_decay")


@dataclass(frozen=True)
class Plan:
    """A target run config, its per-parameter table and the provenance of its numbers."""

    config: RunConfig
    params: tuple[dict[str, Any], ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def base_lr(self) -> float:
        return self.config.optimizer.lr

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written by `save` and read by `load_plan`."""
        m = self.config.model
        return {
            "format": FORMAT,
            "model": {"name": m.name, "width": m.width, "depth": m.depth},
            "base_lr": self.base_lr,
            "provenance": self.provenance,
            "params": [dict(p) for p in self.params],
            "config": self.config.to_dict(),
        }

    def apply(
        self, model: nn.Module, *, init: bool = True, generator: torch.Generator | None = None
    ) -> list[dict]:
        """Parameterize ``model`` per the plan; return its param groups.

        ``init=True`` draws every scaled parameter again with the plan's init std (from
        ``generator``), ``init=False`` keeps the model's values. Forward multipliers are
        installed as hooks either way. Each group has lr, weight_decay, eps (where the
        optimizer has one), role, name and param_names. Raises ConfigError when a parameter
        of ``model`` is missing or has another shape than in the plan's model.
        """
        from hptransfer.assemble import model_factory, parameterize_run, run_roles

        roles = run_roles(self.config, model_factory(self.config))
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
        for e in roles:
            if shapes.get(e.name) != e.shape:
                raise ConfigError(
                    f"model parameter {e.name}: shape {shapes.get(e.name)} where the plan's "
                    f"{self.config.model.name} at width {self.config.model.width} has {e.shape}"
                )
        par = parameterize_run(self.config, model, roles, init=init, generator=generator)
        _check_same(self.params, _rows(par))
        return par.param_groups

    def save(self, path: str | Path) -> None:
        from hptransfer.store import write_json

        write_json(path, self.to_dict())


def _rows(par) -> tuple[dict[str, Any], ...]:
    """Per-parameter rows of a Parameterization: its table plus each parameter's group LR."""
    lr = {n: g["lr"] for g in par.param_groups for n in g["param_names"]}
    return tuple({**vars(s), "lr": lr[name]} for name, s in par.table.items())


def _check_same(planned: tuple[dict, ...], computed: tuple[dict, ...]) -> None:
    """Refuse a plan whose table differs from what the rules compute now."""
    want = {p["name"]: p for p in planned}
    if set(want) != {p["name"] for p in computed}:
        raise ConfigError("plan's parameter names differ from the model the config builds")
    for row in computed:
        for key in _COMPARED:
            a, b = want[row["name"]][key], row[key]
            same = a == b or (
                isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-9)
            )
            if not same:
                raise ConfigError(
                    f"plan's {key} of {row['name']} is {a}, the rules give {b}: the plan was "
                    "written by another version or edited; export it again"
                )


def make_plan(cfg: RunConfig, provenance: dict[str, Any] | None = None) -> Plan:
    """The plan of ``cfg``'s model at cfg's width and base LR, computed on the meta device."""
    from hptransfer.assemble import model_factory, parameterize_run, run_roles

    factory = model_factory(cfg)
    roles = run_roles(cfg, factory)
    with torch.device("meta"):
        model = factory(cfg.model.width)
    par = parameterize_run(cfg, model, roles, init=False)
    return Plan(cfg, _rows(par), dict(provenance or {}))


def load_plan(path: str | Path) -> Plan:
    """Read a plan written by `Plan.save` (e.g. by ``hptransfer predict --export``)."""
    from hptransfer.store import read_json

    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the plan: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a plan (expected format {FORMAT!r})")
    params = tuple(dict(p) for p in data["params"])
    return Plan(from_dict(data["config"]), params, data.get("provenance", {}))
