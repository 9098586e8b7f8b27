"""Export a parameterized model as a plain one: every forward multiplier folded into a weight.

A multiplier hook (`apply.ScaleInput` on an nn.Linear / convolution, `apply.ScaleOutput` on an
nn.Embedding or a bias-free nn.Linear) computes layer(x) with the weight times ``mult``:

    Linear / conv, input scaled:   (mult x) W^T + b  =  x (mult W)^T + b
    Embedding or bias-free Linear, output scaled:   mult (x W^T)  =  x (mult W)^T

so `export_folded` multiplies the weight by ``mult`` and drops the hook: the exported model
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
from hptransfer.param.apply import ScaleInput, ScaleOutput


def _multiplier_hooks(module: nn.Module) -> list[tuple[dict[int, Any], int, Any]]:
    """(hook dict, key, hook) of every hptransfer multiplier on ``module``."""
    found = []
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for key, hook in hooks.items():
            if isinstance(hook, (ScaleInput, ScaleOutput)):
                found.append((hooks, key, hook))
    return found


def _foldable(module: nn.Module, hook: Any) -> bool:
    if isinstance(hook, ScaleInput):
        return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
    if isinstance(module, nn.Embedding):
        return True
    return isinstance(module, nn.Linear) and module.bias is None


@torch.no_grad()
def export_folded(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every hptransfer multiplier folded into its module's weight and
    no multiplier hooks left (hooks of the model's own are kept); ``model`` is not changed.
    Raises ConfigError naming the module where a multiplier cannot be folded."""
    out = copy.deepcopy(model)
    by_tensor: dict[int, list[tuple[str, nn.Module, float]]] = {}
    for name, module in out.named_modules():
        hooks = _multiplier_hooks(module)
        if len(hooks) > 1:
            raise ConfigError(f"{name}: {len(hooks)} multipliers on one module; cannot fold")
        for hook_dict, key, hook in hooks:
            if not _foldable(module, hook):
                raise ConfigError(
                    f"{name or type(out).__name__}: the multiplier {hook.mult:g} on the output of "
                    f"{type(module).__name__} is in no single weight (a residual-branch "
                    "multiplier?); export a model without param.depth_exponent"
                )
            by_tensor.setdefault(id(module.weight), []).append((name, module, float(hook.mult)))
            del hook_dict[key]
    for users in by_tensor.values():
        mults = {mult for _, _, mult in users}
        if len(mults) > 1:
            names = " and ".join(f"{n}.weight (x{m:g})" for n, _, m in users)
            raise ConfigError(
                f"{names} share one tensor with different multipliers; set param.tied = "
                '"untie" (each name its own tensor) to export'
            )
        weight = users[0][1].weight
        assert isinstance(weight, torch.Tensor)
        weight.mul_(mults.pop())
    return out
