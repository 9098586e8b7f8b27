"""Which dimensions of each parameter grow with width, and so its role.

The model is built twice (on the meta device, so no memory is used) at two widths; a dimension
whose size differs grows. From the module type we know which dimension is fan_in and which is
fan_out (nn.Linear, convolutions, RNNs and nn.MultiheadAttention store (fan_out, fan_in, ...);
nn.Embedding / EmbeddingBag and transformers' Conv1D store (fan_in, fan_out)), and so:

    fan_in and fan_out grow -> hidden     only fan_out grows -> input (embeddings)
    only fan_in grows       -> output     a 1-D tensor grows -> vector    nothing grows -> fixed

Fans are per matrix: a grouped convolution's are per group (fan_in = in_channels / groups *
kernel), and a convolution whose groups grow while its per-group fans do not (depthwise, groups
= channels) is a vector: one small width-independent kernel per channel, like a norm gain.

A parameter of 2 or more dims on any other module (a bare nn.Parameter of custom code: fused MoE
experts, a ViT class token, Mamba's A_log) that grows with width is refused by name with the
override that fixes it (`param.overrides`): its storage convention cannot be read from its
type. An overridden parameter of unknown convention takes its fans from its last two dims, the
leading ones being a batch of matrices: fan_in = shape[-1], fan_out = shape[-2].

The result is a side table (`RoleTable`), keyed by parameter name; nothing is attached to the
tensors, so it survives deepcopy, torch.save, DDP and FSDP.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hptransfer.config import ROLES, TIE_RULES
from hptransfer.errors import ConfigError


@dataclass(frozen=True)
class ParamRole:
    """One parameter's entry in the roles table."""

    name: str
    role: str
    shape: tuple[int, ...]
    fan_in: int
    fan_out: int
    n: int
    """The growing dimension: fan_out for input, fan_in for hidden / output, numel for 1-D
    vectors, the number of groups for a depthwise convolution."""
    n_base: int
    """The same dimension in the model built at base width."""
    tied_to: str | None = None
    """For a tied parameter: the name it shares storage with (the first occurrence)."""
    base_shape: tuple[int, ...] | None = None
    """The shape in the model built at base width (None: not known, e.g. a hand-made entry)."""

    @property
    def width_mult(self) -> float:
        return self.n / self.n_base


def _convention(module: nn.Module, pname: str) -> str | None:
    """How ``module`` stores its parameter ``pname``: "out_in" ((fan_out, fan_in, *kernel)),
    "in_out" ((fan_in, fan_out)), or None when the module type does not say."""
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and pname == "weight":
        return "in_out"
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and pname == "weight":
        return "in_out"  # (in, out / groups, *kernel)
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and pname == "weight":
        return "out_in"
    if isinstance(module, nn.RNNBase) and pname.startswith("weight_"):
        return "out_in"  # (gates * hidden, input) and (gates * hidden, hidden)
    if isinstance(module, nn.MultiheadAttention) and pname.endswith("_weight"):
        return "out_in"  # in_proj_weight (3 * embed, embed), q/k/v_proj_weight
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2
        return "in_out"
    return None


def _fans(module: nn.Module, pname: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(fan_in, fan_out, matrices) of a parameter: fans per matrix (per group for grouped
    convolutions) and the number of matrices. A tensor of unknown convention is read as a
    batch of (fan_out, fan_in) matrices in its last two dims."""
    if len(shape) < 2:
        return (shape[0] if shape else 1), (shape[0] if shape else 1), 1
    convention = _convention(module, pname)
    if convention is None:
        return shape[-1], shape[-2], math.prod(shape[:-2])
    if isinstance(module, nn.modules.conv._ConvNd):
        receptive, groups = math.prod(shape[2:]), module.groups
        if convention == "in_out":
            return shape[0] // groups * receptive, shape[1] * receptive, groups
        return shape[1] * receptive, shape[0] // groups * receptive, groups
    if convention == "in_out":
        return shape[0], shape[1], 1
    return shape[1], shape[0], 1


def _grown(
    fans_a: tuple[int, int, int], fans_b: tuple[int, int, int], rank: int
) -> tuple[bool, bool, bool]:
    """Do (fan_in, fan_out, matrices) differ between the two widths? A 1-D tensor's growth is
    its size's (fan_in = fan_out = numel)."""
    if rank < 2:
        return fans_a[0] != fans_b[0], fans_a[0] != fans_b[0], False
    return fans_a[0] != fans_b[0], fans_a[1] != fans_b[1], fans_a[2] != fans_b[2]


def _params_with_owner(
    model: nn.Module,
) -> list[tuple[str, nn.Module, str, nn.Parameter]]:
    out: dict[str, tuple[str, nn.Module, str, nn.Parameter]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            name = f"{mname}.{pname}" if mname else pname
            # named_modules(remove_duplicate=False) can list a shared submodule twice
            out.setdefault(name, (name, module, pname, p))
    return list(out.values())


@dataclass(frozen=True)
class RoleTable:
    """Roles of every parameter of a model, by name."""

    entries: dict[str, ParamRole]

    def __getitem__(self, name: str) -> ParamRole:
        return self.entries[name]

    def __iter__(self) -> Iterator[ParamRole]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def by_role(self, role: str) -> list[str]:
        return [e.name for e in self if e.role == role]

    def format(self) -> str:
        """A printable table."""
        rows = [("name", "role", "shape", "fan_in", "fan_out", "width_mult")]
        for e in self:
            rows.append(
                (
                    e.name,
                    e.role,
                    "x".join(map(str, e.shape)),
                    str(e.fan_in),
                    str(e.fan_out),
                    f"{e.width_mult:g}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def infer_roles(
    model: nn.Module,
    base_model: nn.Module,
    probe_model: nn.Module | None = None,
    *,
    overrides: Mapping[str, str] | None = None,
    tied: str = "error",
) -> RoleTable:
    """Roles of ``model``'s parameters by comparison with the same model at base width.

    ``probe_model`` is a third width, needed only when ``model`` is at the base width (then
    growth is read from base vs probe). ``overrides`` maps fnmatch name patterns to roles and
    wins over inference. Tied weights (one tensor under two names, e.g. an embedding reused as
    the readout) are refused unless ``tied`` says how to treat them: "input" or "output" (one
    rule for the shared tensor) or "untie" (each name gets its own role; `parameterize` then
    gives the readout its own copy).
    """
    if tied not in TIE_RULES:
        raise ConfigError(f"tied={tied!r}; choose one of {', '.join(TIE_RULES)}")
    overrides = overrides or {}
    for pattern, role in overrides.items():
        if role not in ROLES:
            raise ConfigError(f"override {pattern!r} -> {role!r}: role must be one of {ROLES}")
    target = _params_with_owner(model)
    base = {n: (m, pn, p) for n, m, pn, p in _params_with_owner(base_model)}
    probed = _params_with_owner(probe_model) if probe_model is not None else []
    probe = {n: (m, pn, p) for n, m, pn, p in probed}
    if set(base) != {t[0] for t in target}:
        diff = sorted(set(base) ^ {t[0] for t in target})
        raise ValueError(f"models at the two widths have different parameters: {diff[:5]}")
    first_name: dict[int, str] = {}
    entries: dict[str, ParamRole] = {}
    for name, module, pname, p in target:
        shape = tuple(p.shape)
        bmod, bpname, bp = base[name]
        base_shape = tuple(bp.shape)
        if len(shape) != len(base_shape):
            raise ValueError(f"{name}: rank changes with width: {base_shape} vs {shape}")
        fans = _fans(module, pname, shape)
        base_fans = _fans(bmod, bpname, base_shape)
        other, other_fans = shape, fans
        if shape == base_shape and name in probe:
            pmod, ppname, pp = probe[name]
            other, other_fans = tuple(pp.shape), _fans(pmod, ppname, tuple(pp.shape))
        grown = _grown(base_fans, other_fans, len(shape))
        forced = next((r for pat, r in overrides.items() if fnmatch.fnmatchcase(name, pat)), None)
        if forced is None and len(shape) >= 2 and other != base_shape:
            if _convention(module, pname) is None:
                suffix = ".".join(name.split(".")[-2 if pname in ("weight", "bias") else -1 :])
                pattern = name if name == suffix else f"*.{suffix}"
                raise ConfigError(
                    f"{name}: role unknown: {type(module).__name__}.{pname} has shape "
                    f"{base_shape} at base width and {other} at width, in no storage order "
                    f'hptransfer knows; set it in param.overrides, e.g. "{pattern}" = "hidden" '
                    '(matrices in the last two dims) or "vector" (its init kept)'
                )
        role = forced or _role(shape, *grown)
        tied_to = first_name.get(id(p))
        if tied_to is not None:
            first_role = entries[tied_to].role
            if tied == "error" and first_role != role:
                raise ConfigError(
                    f"{name} is tied to {tied_to} ({first_role} vs {role}); set param.tied to "
                    "input, output or untie to choose a rule for the shared weight"
                )
            if tied in ("input", "output"):
                role = tied
                first = entries[tied_to]
                entries[tied_to] = ParamRole(
                    first.name,
                    role,
                    first.shape,
                    first.fan_in,
                    first.fan_out,
                    first.n,
                    first.n_base,
                    base_shape=first.base_shape,
                )
        else:
            first_name[id(p)] = name
        n, n_base = _growing(shape, grown, fans, base_shape, base_fans)
        entries[name] = ParamRole(
            name, role, shape, fans[0], fans[1], n, n_base, tied_to, base_shape
        )
    return RoleTable(entries)


def _role(shape: tuple[int, ...], grow_in: bool, grow_out: bool, grow_batch: bool) -> str:
    if len(shape) < 2:
        return "vector" if grow_in else "fixed"
    if grow_in and grow_out:
        return "hidden"
    if grow_out:
        return "input"
    if grow_in:
        return "output"
    if grow_batch:  # more matrices of a fixed size: a depthwise convolution's channels
        return "vector"
    return "fixed"


def _growing(
    shape: tuple[int, ...],
    grown: tuple[bool, bool, bool],
    fans: tuple[int, int, int],
    base_shape: tuple[int, ...],
    base_fans: tuple[int, int, int],
) -> tuple[int, int]:
    """The growing dimension at width and at base width: fan_in when it grows, else fan_out,
    else the number of matrices; numel for vectors; 1 when nothing grows. Depends on growth
    only, not on the role label, so overrides and tie rules never change a layer's width
    multiplier."""
    grow_in, grow_out, grow_batch = grown
    if len(shape) < 2:
        return (math.prod(shape), math.prod(base_shape)) if grow_in else (1, 1)
    for grew, i in ((grow_in, 0), (grow_out, 1), (grow_batch, 2)):
        if grew:
            return fans[i], base_fans[i]
    return 1, 1


def roles_from_factory(
    make_model: Callable[[int], nn.Module],
    width: int,
    base_width: int,
    *,
    overrides: Mapping[str, str] | None = None,
    tied: str = "error",
) -> RoleTable:
    """Build ``make_model`` at ``width`` and ``base_width`` (and twice base, if they are equal)
    on the meta device, and infer roles by comparison."""
    with torch.device("meta"):
        model = make_model(width)
        base = make_model(base_width)
        probe = make_model(2 * base_width) if width == base_width else None
    return infer_roles(model, base, probe, overrides=overrides, tied=tied)
