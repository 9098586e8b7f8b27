"""Forward multipliers: picklable hooks that scale a parameter's use without editing the model.

nn.Linear and convolutions scale their input (`ScaleInput`, which keeps biases unscaled), or
their output when that is the smaller tensor and there is no bias (`ScaleOutput`);
nn.Embedding scales its output; a parameter of any other kind (a bare nn.Parameter, 3-D fused
expert tensors, a tensor used in custom code) reads as ``mult`` times itself for the length of
its owner's forward (`ScaleParam` / `RestoreParam`). All are module-level classes, not
closures, so torch.save(model), torch.load and copy.deepcopy keep them, and
`hptransfer.param.export` can find and fold them. `scale_branches` puts the residual-branch
(depth) multipliers on module outputs.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from hptransfer.errors import ConfigError


class ScaleInput:
    """Forward pre-hook: multiply a module's first input by ``mult``. A module-level class, not
    a closure, so that a parameterized model pickles (torch.save, deepcopy) with its hooks."""

    __slots__ = ("mult",)

    def __init__(self, mult: float) -> None:
        self.mult = mult

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * self.mult, *args[1:])


class ScaleOutput:
    """Forward hook: multiply a module's output (or the first item of a tuple output, e.g.
    transformers attention's (output, weights, ...)) by ``mult``; picklable like `ScaleInput`."""

    __slots__ = ("mult",)

    def __init__(self, mult: float) -> None:
        self.mult = mult

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] * self.mult, *output[1:])
        return output * self.mult


class ScaleParam:
    """Forward pre-hook on the module that owns a parameter of any other kind (a bare
    nn.Parameter of custom code: a ViT class token or position table, fused 3-D expert
    tensors, a tensor used in the module's own forward or its children's): for the length of
    the module's forward, the parameter ``pname`` reads as ``mult`` times itself (autograd flows
    to the parameter), and `RestoreParam` puts the parameter back afterwards (also when the
    forward raises). Picklable like `ScaleInput`; state dicts, names and param groups keep the
    parameter itself."""

    __slots__ = ("depth", "mult", "pname", "stashed")

    def __init__(self, mult: float, pname: str) -> None:
        self.mult, self.pname = mult, pname
        self.stashed: nn.Parameter | None = None
        self.depth = 0  # the owner's forward inside itself: substitute once, restore once

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.depth == 0:
            self.stashed = module._parameters[self.pname]
            module._parameters[self.pname] = self.stashed * self.mult  # type: ignore[assignment,operator]
        self.depth += 1

    def __getstate__(self) -> tuple[float, str]:
        return self.mult, self.pname

    def __setstate__(self, state: tuple[float, str]) -> None:
        self.mult, self.pname = state
        self.stashed, self.depth = None, 0


class RestoreParam:
    """Forward hook (always called) that ends `ScaleParam`'s substitution."""

    __slots__ = ("scale",)

    def __init__(self, scale: ScaleParam) -> None:
        self.scale = scale

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        scale = self.scale
        scale.depth -= 1
        if scale.depth == 0:
            module._parameters[scale.pname] = scale.stashed
            scale.stashed = None


def install_multiplier(
    module: nn.Module, pname: str, name: str, mult: float
) -> list[RemovableHandle]:
    """The hooks that multiply parameter ``pname`` of ``module`` (called ``name``) by
    ``mult`` in the forward pass; ConfigError where no hook can (nn.RNNBase)."""
    if isinstance(module, nn.Embedding) and pname == "weight":
        return [module.register_forward_hook(ScaleOutput(mult))]
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and pname == "weight":
        if (
            getattr(module, "bias", None) is None
            and isinstance(module, nn.Linear)
            and (module.out_features <= module.in_features)
        ):
            return [module.register_forward_hook(ScaleOutput(mult))]  # the smaller tensor
        return [module.register_forward_pre_hook(ScaleInput(mult))]
    if isinstance(module, nn.RNNBase):  # its forward reads cached references, not the attribute
        raise ConfigError(
            f"{name}: no forward multiplier for {type(module).__name__}.{pname} (it reads its "
            "weights from a cache); use form='folded' (param.form = \"folded\"), which needs "
            "no hooks"
        )
    scale = ScaleParam(mult, pname)
    return [
        module.register_forward_pre_hook(scale),
        module.register_forward_hook(RestoreParam(scale), always_call=True),
    ]


def scale_branches(model: nn.Module, patterns: list[str], mult: float) -> list[RemovableHandle]:
    """Multiply the output of every module whose name matches one of the fnmatch ``patterns``
    (the residual branches, e.g. ``blocks.*.attn``) by ``mult`` with forward hooks, so that
    x + f(x) becomes x + mult * f(x) without editing the model. Returns the hook handles.
    Raises ValueError when no module matches (a depth multiplier that silently did nothing).
    """
    patterns = [p.strip() for p in patterns if p.strip()]
    names = [
        name
        for name, _ in model.named_modules()
        if name and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]
    if not names:
        raise ValueError(
            f"no module of {type(model).__name__} matches the residual-branch patterns "
            f"{patterns}; set param.depth_branches"
        )
    # a match inside another match would be scaled twice: keep the outermost
    names = [n for n in names if not any(n.startswith(o + ".") for o in names)]
    modules = dict(model.named_modules())
    return [modules[n].register_forward_hook(ScaleOutput(mult)) for n in names]
