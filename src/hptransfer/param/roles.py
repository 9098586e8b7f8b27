"""Which dimensions of each parameter grow with width, and so its role.

The model is built twice (on the meta device, so no memory is used) at two widths; a dimension
whose size differs grows. From the module type we know which dimension is fan_in and which is
fan_out (nn.Linear and convolutions store (fan_out, fan_in, ...); nn.Embedding stores
(fan_in = vocabulary, fan_out = dim)), and so:

    fan_in and fan_out grow -> hidden     only fan_out grows -> input (embeddings)
    only fan_in grows       -> output     a 1-D tensor grows -> vector    nothing grows -> fixed

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
    """The growing dimension: fan_out for input, fan_in for hidden / output, numel for vectors."""
    n_base: int
    """The same dimension in the model built at base width."""
    tied_to: str | None = None
    """For a tied parameter: the name it shares storage with (the first occurrence)."""
    base_shape: tuple[int, ...] | None = None
    """The shape in the model built at base width (None: not known, e.g. a hand-made entry)."""

    @property
    def width_mult(self) -> float:
        return self.n / self.n_base


def _fans(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a parameter from its module's storage convention."""
    if len(shape) < 2:
        return (shape[0] if shape else 1), (shape[0] if shape else 1)
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # stored (in, out, *kernel)
        return shape[0] * receptive, shape[1] * receptive
    return shape[1] * receptive, shape[0] * receptive


def _grown(
    module: nn.Module, shape_a: tuple[int, ...], shape_b: tuple[int, ...]
) -> tuple[bool, bool]:
    """Does (fan_in, fan_out) differ between the two shapes?"""
    if len(shape_a) != len(shape_b):
        raise ValueError(f"parameter rank changes with width: {shape_a} vs {shape_b}")
    if len(shape_a) < 2:
        grew = shape_a != shape_b
        return grew, grew
    fa, fb = _fans(module, shape_a), _fans(module, shape_b)
    return fa[0] != fb[0], fa[1] != fb[1]


def _params_with_owner(model: nn.Module) -> list[tuple[str, nn.Module, nn.Parameter]]:
    out = []
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            out.append((f"{mname}.{pname}" if mname else pname, module, p))
    # named_modules(remove_duplicate=False) can list a shared submodule twice
    first: dict[str, object] = {}
    return [t for t in out if first.setdefault(t[0], t) is t]


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
    base = {n: (m, p) for n, m, p in _params_with_owner(base_model)}
    probe = {n: (m, p) for n, m, p in _params_with_owner(probe_model)} if probe_model else None
    if set(base) != {n for n, _, _ in target}:
        diff = sorted(set(base) ^ {n for n, _, _ in target})
        raise ValueError(f"models at the two widths have different parameters: {diff[:5]}")
    first_name: dict[int, str] = {}
    entries: dict[str, ParamRole] = {}
    for name, module, p in target:
        shape = tuple(p.shape)
        bmod, bp = base[name]
        base_shape = tuple(bp.shape)
        if shape == base_shape and probe is not None:
            grow_in, grow_out = _grown(module, base_shape, tuple(probe[name][1].shape))
        else:
            grow_in, grow_out = _grown(module, base_shape, shape)
        fan_in, fan_out = _fans(module, shape)
        bfan_in, bfan_out = _fans(bmod, base_shape)
        role = _role(shape, grow_in, grow_out)
        for pattern, forced in overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                role = forced
                break
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
        n, n_base = _growing(
            shape, grow_in, grow_out, (fan_in, fan_out), base_shape, (bfan_in, bfan_out)
        )
        entries[name] = ParamRole(
            name, role, shape, fan_in, fan_out, n, n_base, tied_to, base_shape
        )
    return RoleTable(entries)


def _role(shape: tuple[int, ...], grow_in: bool, grow_out: bool) -> str:
    if len(shape) < 2:
        return "vector" if grow_in else "fixed"
    if grow_in and grow_out:
        return "hidden"
    if grow_out:
        return "input"
    if grow_in:
        return "output"
    return "fixed"


def _growing(
    shape: tuple[int, ...],
    grow_in: bool,
    grow_out: bool,
    fans: tuple[int, int],
    base_shape: tuple[int, ...],
    base_fans: tuple[int, int],
) -> tuple[int, int]:
    """The growing dimension at width and at base width: fan_in when it grows, else fan_out;
    numel for vectors; 1 when nothing grows. Depends on growth only, not on the role label,
    so overrides and tie rules never change a layer's width multiplier."""
    if len(shape) < 2:
        return (math.prod(shape), math.prod(base_shape)) if grow_in else (1, 1)
    if grow_in:
        return fans[0], base_fans[0]
    if grow_out:
        return fans[1], base_fans[1]
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
