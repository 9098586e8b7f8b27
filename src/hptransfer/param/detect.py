"""Find the width-dependent constants a model already applies, by measurement at two widths.

A parameterization that puts its own multipliers on a model which scales by width itself
stacks the two: stock T5 multiplies the decoder output by d_model^-1/2 before its tied readout
and muP's readout multiplier m^-1/2 comes on top (muP's loss then worsens with width); Gemma
multiplies its embeddings by sqrt(d). `detect_scaling` runs the model (as built, before any
parameterization) at two widths and measures, for every nn.Linear / convolution / nn.Embedding
call, two ratios:

    output: the module's output against what its weights predict (F.linear, F.conv*,
            F.embedding of its input): a subclass that rescales (Gemma's scaled embedding)
    input:  the module's input against the latest earlier module output it is proportional to
            (the same shape, equal up to a constant c): a constant applied in the model's own
            code between two modules (T5's d_model^-1/2 before lm_head)

A ratio c that differs between the widths is a width-dependent constant, c ~ width^p; so is an
attention module's float ``scaling`` that differs. Each is reported with the switch that turns
it off where one is known. `check_stacking` then warns (strict: raises ConfigError) where a
rule's multiplier lands on such a site. Set-up cost only: nothing runs during training.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hptransfer.errors import ConfigError
from hptransfer.param.roles import RoleTable
from hptransfer.param.rules import Rule

#: |log(c2 / c1)| / log(w2 / w1) above this is width dependence, not float noise.
MIN_EXPONENT = 0.05
_PROPORTIONAL = 1e-5  # relative residual of x = c y


@dataclass(frozen=True)
class Scaling:
    """A width-dependent constant inside the model."""

    module: str
    where: str
    """"input", "output" (of an nn.Linear / conv / nn.Embedding) or "scaling" (attention)."""
    factors: tuple[float, float]
    """The constant at the two widths."""
    exponent: float
    """p of c ~ width^p."""
    switch: str
    """What turns it off."""

    def format(self) -> str:
        c1, c2 = self.factors
        return (
            f"{self.module} ({self.where}): x{c1:.4g} -> x{c2:.4g}, ~ width^{self.exponent:+.2f}; "
            f"off: {self.switch}"
        )


def _predicted(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """What the module's weights compute from ``x`` by the base class's rule."""
    if isinstance(module, nn.Embedding):
        return F.embedding(x, module.weight, module.padding_idx)
    if isinstance(module, nn.Linear):
        return F.linear(x, module.weight, module.bias)
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(
        module, nn.modules.conv._ConvTransposeNd
    ):
        conv: Any = module  # Conv1d / 2d / 3d: _conv_forward(input, weight, bias)
        predicted: torch.Tensor = conv._conv_forward(x, module.weight, module.bias)
        return predicted
    return None


def _ratio(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """c with x = c y (least squares) when the fit is exact to float rounding, else None."""
    if x.shape != y.shape or not x.is_floating_point() or not y.is_floating_point():
        return None
    x, y = x.detach().double().flatten(), y.detach().double().flatten()
    yy = float(y @ y)
    if yy == 0.0:
        return None
    c = float(x @ y) / yy
    resid = float((x - c * y).norm()) / max(float(x.norm()), 1e-300)
    return c if resid < _PROPORTIONAL else None


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


@torch.no_grad()
def _measure(model: nn.Module, run: Callable[[nn.Module], Any]) -> dict[tuple[str, str], float]:
    """Each weighted module's input and output constants (first call), and attention scalings."""
    found: dict[tuple[str, str], float] = {}
    outputs: list[torch.Tensor] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        x, out = _first_tensor(args), _first_tensor(output)
        if out is None:
            return
        name = names[module]
        predicted = None if x is None else _predicted(module, x)
        if x is not None and predicted is not None and (name, "output") not in found:
            c = _ratio(out, predicted)
            if c is not None:
                found[(name, "output")] = c
            if x.is_floating_point() and (name, "input") not in found:
                for earlier in reversed(outputs):
                    c = _ratio(x, earlier)
                    if c is not None:
                        found[(name, "input")] = c
                        break
        if out.is_floating_point():
            outputs.append(out)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        run(model)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:  # as it was (the run's own model is measured too)
            m.training = training
    for name, module in model.named_modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, float):
            found[(name, "scaling")] = scaling
    return found


def _switch(model: nn.Module, module: str, where: str) -> str:
    """The known switch for a site, else what to do."""
    sub = model.get_submodule(module) if module else model
    config = getattr(model, "config", None)
    if where == "output" and hasattr(sub, "embed_scale"):
        return f"{module}.embed_scale = 1 (the model's own embedding scale)"
    if where == "input" and getattr(config, "scale_decoder_outputs", False):
        return "config.scale_decoder_outputs = False (T5's d_model^-1/2 before the readout)"
    if where == "scaling":
        return "model.attn_scale / hptransfer.models.hf.set_attention_scale"
    return "none known: take the constant out of the model's code"


def detect_scaling(
    factory: Callable[[int], nn.Module],
    run: Callable[[nn.Module], Any],
    widths: tuple[int, int],
    *,
    seed: int = 0,
    built: Mapping[int, nn.Module] | None = None,
) -> list[Scaling]:
    """The width-dependent constants of ``factory``'s model: it is built at both ``widths``
    (seeded, on the CPU, as the model initializes itself) and ``run(model)`` makes one forward
    pass (e.g. ``lambda m: m(input_ids=x)``). ``built`` maps a width to the model already
    built there from ``seed`` (the run's own, as built): measured instead of a new build, and
    left in its train/eval modes."""
    w1, w2 = widths
    built = built or {}
    measured = []
    for width in widths:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = built[width] if width in built else factory(width)
            measured.append(_measure(model, run))
    out = []
    for key in measured[0].keys() & measured[1].keys():
        c1, c2 = measured[0][key], measured[1][key]
        if c1 == 0.0 or c2 == 0.0 or (c1 > 0) != (c2 > 0):
            continue
        p = math.log(c2 / c1) / math.log(w2 / w1)
        if abs(p) > MIN_EXPONENT:
            out.append(Scaling(*key, (c1, c2), p, _switch(model, *key)))
    return sorted(out, key=lambda s: (s.module, s.where))


def check_stacking(
    found: list[Scaling], roles: RoleTable, rule: Rule, *, strict: bool = False
) -> list[str]:
    """Where ``rule`` gives the weight of a module that already scales by width a multiplier
    exponent a != 0 (multiplier form or folded into init and LR alike): one message per site,
    warned (strict: ConfigError on the first)."""
    messages = []
    for s in found:
        name = f"{s.module}.weight"
        if s.where == "scaling" or name not in roles.entries:
            continue
        role = roles[name].role
        a = rule.roles[role].a if role in rule.roles else 0
        if a == 0:
            continue
        msg = (
            f"{name}: {rule.parameterization}'s {role} multiplier width_mult^{-float(a):+g} stacks "
            f"on the model's own width^{s.exponent:+.2f} at its {s.where}; turn that off: "
            f"{s.switch}"
        )
        if strict:
            raise ConfigError(msg)
        warnings.warn(msg, stacklevel=2)
        messages.append(msg)
    return messages
