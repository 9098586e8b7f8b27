"""Which dimensions of each parameter grow with width, and so its role.

The model is built at two widths (on the meta device where it can be, so no memory is used).
Each parameter's fans come from how the forward pass uses it (`trace.trace_uses`, when an
example input is given: contracted in a linear / matmul / einsum / conv -> a matrix with the
contracted size as fan_in, per matrix; gathered -> an embedding table; applied elementwise or
through exp -> a vector), else from its module's storage order (`storage`). Comparing the two
widths:

    fan_in and fan_out grow -> hidden     only fan_out grows -> input (embeddings)
    only fan_in grows       -> output     only the matrices grow -> vector (depthwise conv)
    elementwise and growing -> vector     nothing grows -> fixed

A parameter of 2 or more dims that grows and whose use fits no rule (or, untraced, whose module
has no known storage order) is refused by name with the override that fixes it
(`param.overrides`). An overridden parameter of unknown use takes its fans from its last two
dims, the leading ones a batch of matrices: fan_in = shape[-1], fan_out = shape[-2].

The result is a side table (`RoleTable`), keyed by parameter name, with the evidence of each
role; nothing is attached to the tensors, so it survives deepcopy, torch.save, DDP and FSDP.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from hptransfer.config import ROLES, TIE_RULES
from hptransfer.errors import ConfigError
from hptransfer.param.storage import Reading, read_storage
from hptransfer.param.trace import Use, trace_uses


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
    evidence: str = ""
    """Where the role came from: the traced use ("linear in=dim1 out=dim0", "gathered
    (embedding)", "applied to activations (mul)", "exp"), the module's storage order, or an
    override."""

    @property
    def width_mult(self) -> float:
        return self.n / self.n_base


def _traced(shape: tuple[int, ...], uses: list[Use]) -> Reading:
    """The reading from the traced uses: any contraction makes a matrix (all contractions must
    agree on the fans), else a gather makes an embedding table (rows = fan_in), else broadcast
    or nonlinear uses make it elementwise; a parameter used only in other ways is unknown."""
    numel = math.prod(shape)
    contractions = [u for u in uses if u.kind == "contract"]
    if contractions:
        fans = {
            (
                u.fan_in,
                u.fan_out,
                u.groups
                if u.op.startswith("conv")
                else max(1, numel // max(1, u.fan_in * u.fan_out)),
            )
            for u in contractions
        }
        if len(fans) > 1:
            seen = "; ".join(sorted({u.describe() for u in contractions}))
            return Reading(
                "unknown", (0, 0, 0), f"contracted as matrices of different shapes: {seen}"
            )
        return Reading("matrix", fans.pop(), contractions[0].describe())
    for kind in ("gather", "nonlinear", "broadcast"):
        use = next((u for u in uses if u.kind == kind), None)
        if use is None:
            continue
        if kind == "gather" and len(shape) >= 2:
            return Reading("matrix", (shape[0], math.prod(shape[1:]), 1), use.describe())
        return Reading("elementwise", (numel, numel, 1), use.describe())
    return Reading(
        "unknown",
        (shape[-1], shape[-2], math.prod(shape[:-2])) if len(shape) > 1 else (numel, numel, 1),
        "; ".join(sorted({u.describe() for u in uses})),
    )


def _read(module: nn.Module, pname: str, shape: tuple[int, ...], uses: list[Use] | None) -> Reading:
    """The trace's reading where the forward pass reached the parameter, else its storage."""
    if uses:
        return _traced(shape, uses)
    reading = read_storage(module, pname, shape)
    if uses is not None and reading.kind == "unknown":  # traced, but never reached
        return Reading("unknown", reading.fans, "not reached by the forward pass")
    return reading


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
        rows = [("name", "role", "shape", "fan_in", "fan_out", "width_mult", "evidence")]
        for e in self:
            rows.append(
                (
                    e.name,
                    e.role,
                    "x".join(map(str, e.shape)),
                    str(e.fan_in),
                    str(e.fan_out),
                    f"{e.width_mult:g}",
                    e.evidence,
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
    example: Any = None,
) -> RoleTable:
    """Roles of ``model``'s parameters by comparison with the same model at base width.

    With ``example`` (the forward pass's input: a tensor, a tuple of arguments or a dict of
    keyword arguments) each model is run once under `trace.trace_uses` and a parameter's fans
    come from how it is used; without it (or for a parameter the pass never reaches) from its
    module's storage convention. ``probe_model`` is a third width, needed only when ``model``
    is at the base width (then growth is read from base vs probe). ``overrides`` maps fnmatch
    name patterns to roles and wins over inference. Tied weights (one tensor under two names,
    e.g. an embedding reused as the readout) are refused unless ``tied`` says how to treat them:
    "input" or "output" (one rule for the shared tensor) or "untie" (each name gets its own
    role; `parameterize` then gives the readout its own copy).
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
    traced = example is not None
    uses, base_uses, probe_uses = (
        trace_uses(m, example) if traced and m is not None else {}
        for m in (model, base_model, probe_model)
    )
    first_name: dict[int, str] = {}
    entries: dict[str, ParamRole] = {}
    for name, module, pname, p in target:
        shape = tuple(p.shape)
        bmod, bpname, bp = base[name]
        base_shape = tuple(bp.shape)
        if len(shape) != len(base_shape):
            raise ValueError(f"{name}: rank changes with width: {base_shape} vs {shape}")
        reading = _read(module, pname, shape, uses.get(name, []) if traced else None)
        base_reading = _read(bmod, bpname, base_shape, base_uses.get(name, []) if traced else None)
        other, other_reading = shape, reading
        if shape == base_shape and name in probe:
            pmod, ppname, pp = probe[name]
            other = tuple(pp.shape)
            other_reading = _read(pmod, ppname, other, probe_uses.get(name, []) if traced else None)
        forced = next((r for pat, r in overrides.items() if fnmatch.fnmatchcase(name, pat)), None)
        if other_reading.kind != base_reading.kind and forced is None:
            reading = Reading(
                "unknown",
                reading.fans,
                f"used as {base_reading.evidence!r} at base width, {other_reading.evidence!r} "
                "at width",
            )
        if (
            forced is None
            and len(shape) >= 2
            and other != base_shape
            and "unknown" in (reading.kind, other_reading.kind)
        ):
            raise ConfigError(_refusal(name, module, pname, base_shape, other, reading, traced))
        if reading.kind == "elementwise" or (
            reading.kind == "unknown" and forced in ("vector", "fixed", None)
        ):
            grown_dims = [i for i, (a, b) in enumerate(zip(base_shape, other)) if a != b]
            n = math.prod(shape[i] for i in grown_dims) if grown_dims else 1
            n_base = math.prod(base_shape[i] for i in grown_dims) if grown_dims else 1
            fan = n if grown_dims else math.prod(shape)
            role = forced or ("vector" if grown_dims else "fixed")
            fans, evidence = (fan, fan, 1), reading.evidence
        else:
            fans, base_fans = reading.fans, base_reading.fans
            if reading.kind == "unknown" or base_reading.kind == "unknown":  # overridden
                fans = (shape[-1], shape[-2], math.prod(shape[:-2]))
                base_fans = (base_shape[-1], base_shape[-2], math.prod(base_shape[:-2]))
            grown = _grown(base_fans, _fans_of(other_reading, other, fans), len(shape))
            role = forced or _role(shape, *grown)
            n, n_base = _growing(shape, grown, fans, base_shape, base_fans)
            evidence = reading.evidence
        if forced is not None:
            evidence = f"override {forced}" + (f"; {evidence}" if evidence else "")
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
                entries[tied_to] = replace(entries[tied_to], role=role)
        else:
            first_name[id(p)] = name
        entries[name] = ParamRole(
            name, role, shape, fans[0], fans[1], n, n_base, tied_to, base_shape, evidence
        )
    return RoleTable(entries)


def _fans_of(
    reading: Reading, shape: tuple[int, ...], fans: tuple[int, int, int]
) -> tuple[int, int, int]:
    """The other width's fans, read the same way as ``fans`` were (last two dims if unknown)."""
    if reading.kind == "unknown":
        return shape[-1], shape[-2], math.prod(shape[:-2])
    return reading.fans


def _refusal(
    name: str,
    module: nn.Module,
    pname: str,
    base_shape: tuple[int, ...],
    other: tuple[int, ...],
    reading: Reading,
    traced: bool,
) -> str:
    """One line naming the parameter, why no rule fits, and the override that fixes it."""
    suffix = ".".join(name.split(".")[-2 if pname in ("weight", "bias") else -1 :])
    pattern = name if name == suffix else f"*.{suffix}"
    if not traced:
        why = "in no storage order hptransfer knows (give an example input to trace its use)"
    else:
        why = f"its use fits no rule ({reading.evidence or 'no use recorded'})"
    return (
        f"{name}: role unknown: {type(module).__name__}.{pname} has shape {base_shape} at base "
        f"width and {other} at width, {why}; set it in param.overrides, e.g. "
        f'"{pattern}" = "hidden" (matrices in the last two dims) or "vector" (its init kept)'
    )


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
    example: Any = None,
    cpu_model: Callable[[int], nn.Module] | None = None,
) -> RoleTable:
    """Build ``make_model`` at ``width`` and ``base_width`` (and twice base, if they are equal)
    and infer roles by comparison, tracing one forward pass on ``example`` at each width when
    it is given (see `infer_roles`). The models are built on the meta device (no memory, no
    FLOPs); a model whose forward pass needs real values (``.item()``, data-dependent routing)
    is traced on the CPU instead, under a forked RNG so that the caller's seed stream is
    unchanged. ``cpu_model`` (width -> model) gives the CPU models, e.g. models the caller
    built already (the trace leaves them as they were); default: ``make_model``."""

    def infer(device: str, make: Callable[[int], nn.Module]) -> RoleTable:
        with torch.device(device):
            model = make(width)
            base = make(base_width)
            probe = make(2 * base_width) if width == base_width else None
        return infer_roles(model, base, probe, overrides=overrides, tied=tied, example=example)

    if example is None:
        return infer("meta", make_model)
    try:
        return infer("meta", make_model)
    except (RuntimeError, NotImplementedError):  # an op with no meta kernel, .item() etc.
        with torch.random.fork_rng(devices=[]):
            return infer("cpu", cpu_model or make_model)
