"""Export a parameterized model as a plain one: every forward multiplier folded into a weight.

A multiplier hook (`hptransfer.param.multipliers`) computes a layer with one parameter times
``mult``:

    Linear / conv, input scaled:   (mult x) W^T + b  =  x (mult W)^T + b
    Embedding or bias-free Linear, output scaled:   mult (x W^T)  =  x (mult W)^T
    any other parameter (ScaleParam):   the owner's forward reads mult p

so `export_folded` multiplies that parameter by ``mult`` and drops the hook: the exported model
computes the same outputs without hptransfer (to float rounding; exactly when ``mult`` is a power
of two). The training dynamics are not part of an export: for further training with hptransfer,
keep the multiplier form (torch.save, or a state dict and ``parameterize(..., init=False)``).

Refused by name, because no single weight holds the factor: a tensor shared by two modules with
different multipliers (tied weights under ``param.tied = "input"`` / ``"output"`` have the same
one and fold once; other ties need ``param.tied = "untie"``), and an output multiplier on any
other module (the residual-branch multipliers of ``param.depth_exponent``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from hptransfer.errors import ConfigError
from hptransfer.param.multipliers import RestoreParam, ScaleInput, ScaleOutput, ScaleParam


def _multiplier_hooks(module: nn.Module) -> list[tuple[dict[int, Any], int, Any]]:
    """(hook dict, key, hook) of every hptransfer multiplier on ``module``."""
    found = []
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for key, hook in hooks.items():
            if isinstance(hook, (ScaleInput, ScaleOutput, ScaleParam, RestoreParam)):
                found.append((hooks, key, hook))
    return found


def _folded_param(name: str, module: nn.Module, hook: Any) -> str:
    """The name of the parameter of ``module`` that holds ``hook``'s multiplier, or
    ConfigError where none does."""
    if isinstance(hook, ScaleParam):
        return hook.pname
    if isinstance(hook, ScaleInput) and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        return "weight"
    if isinstance(module, nn.Embedding) or (isinstance(module, nn.Linear) and module.bias is None):
        return "weight"
    raise ConfigError(
        f"{name or type(module).__name__}: the multiplier {hook.mult:g} on the output of "
        f"{type(module).__name__} is in no single weight (a residual-branch multiplier?); "
        "export a model without param.depth_exponent"
    )


@torch.no_grad()
def export_folded(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every hptransfer multiplier folded into the parameter it
    scales and no multiplier hooks left (hooks of the model's own are kept); ``model`` is not
    changed. Raises ConfigError naming the module where a multiplier cannot be folded."""
    out = copy.deepcopy(model)
    by_tensor: dict[int, list[tuple[str, torch.Tensor, float]]] = {}
    for name, module in out.named_modules():
        layer_hooks = 0
        for hook_dict, key, hook in _multiplier_hooks(module):
            del hook_dict[key]
            if isinstance(hook, RestoreParam):
                continue
            layer_hooks += not isinstance(hook, ScaleParam)
            if layer_hooks > 1:
                raise ConfigError(f"{name}: two multipliers on one module's output; cannot fold")
            pname = _folded_param(name, module, hook)
            p = module._parameters[pname]
            assert p is not None
            full = f"{name}.{pname}" if name else pname
            by_tensor.setdefault(id(p), []).append((full, p, float(hook.mult)))
    for users in by_tensor.values():
        mults = {mult for _, _, mult in users}
        if len(mults) > 1:
            names = " and ".join(f"{n} (x{m:g})" for n, _, m in users)
            raise ConfigError(
                f"{names} share one tensor with different multipliers; set param.tied = "
                '"untie" (each name its own tensor) to export'
            )
        users[0][1].mul_(mults.pop())
    return out
