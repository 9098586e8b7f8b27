"""How a model uses each parameter: one forward pass under a `TorchFunctionMode`.

Every torch function call is seen; a parameter (or a view or cast of it: transpose, index,
reshape, expand, `.float()`, slicing one expert's matrix out of a fused tensor) that reaches it
is recorded as a `Use`:

    contract   linear / matmul / mm / bmm / addmm / baddbmm / einsum / conv / RNN / attention
               weights: the contracted size is the fan_in, the output size the fan_out, per
               matrix (the leading batch dims and convolution groups count matrices)
    gather     indexed by integer tensors (F.embedding, index_select, W[idx])
    broadcast  applied elementwise to activations or concatenated with them (norm gains,
               biases, class tokens, position embeddings)
    nonlinear  passed through exp / softplus / sigmoid / log ... before any other use (Mamba's
               A_log): not a weight whose scale a width rule may set
    unknown    consumed by any other function (a reduction, a custom op)

Arithmetic that keeps the parameter's shape (``W * 0.5``, ``-W``, ``W + B``) keeps it the
same parameter. The module on top of the forward stack names which of a tied tensor's names
a use belongs to (a GPT-2 embedding is gathered by ``wte``, contracted by ``lm_head``).

The trace runs once, when the roles table is built, on the meta device where the model
allows it (no memory, no FLOPs); nothing stays installed, so training has no extra cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

F = nn.functional
Dims = tuple[int | None, ...]
"""For a view of a parameter: the parameter dim behind each view dim (None: new or unknown)."""


@dataclass(frozen=True)
class Use:
    """One consumption of a parameter in the forward pass."""

    kind: str
    """contract, gather, broadcast, nonlinear or unknown."""
    op: str
    fan_in: int = 0
    fan_out: int = 0
    in_dims: tuple[int | None, ...] = ()
    """Parameter dims contracted (contract only; None where a reshape hid them)."""
    out_dims: tuple[int | None, ...] = ()
    groups: int = 1
    """Convolution groups (matrices that a grouped convolution holds side by side)."""
    owner: str = ""
    """The name of the module on top of the forward stack that owns the parameter (if any)."""

    def describe(self) -> str:
        """Evidence for the roles table, e.g. "linear in=dim1 out=dim0"."""
        if self.kind == "contract":

            def d(dims: tuple[int | None, ...]) -> str:
                return ",".join("?" if i is None else f"dim{i}" for i in dims) or "-"

            groups = f" groups={self.groups}" if self.groups != 1 else ""
            return f"{self.op} in={d(self.in_dims)} out={d(self.out_dims)}{groups}"
        if self.kind == "gather":
            return f"gathered ({self.op})"
        if self.kind == "broadcast":
            return f"applied to activations ({self.op})"
        if self.kind == "nonlinear":
            return self.op
        return f"used by {self.op}"


def _name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__name__", str(func))
    if name == "__get__":  # a property such as Tensor.T
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name.strip("_")


VIEWS = {
    "view", "reshape", "flatten", "unflatten", "view_as", "reshape_as", "expand", "expand_as",
    "broadcast_to", "repeat", "to", "float", "double", "half", "bfloat16", "type", "type_as",
    "contiguous", "clone", "detach", "data", "requires_grad", "neg", "transpose", "swapaxes",
    "swapdims", "t", "T", "mT", "permute", "unsqueeze", "squeeze", "getitem", "select",
    "narrow", "chunk", "split", "tensor_split", "unbind",
}  # fmt: skip
"""Functions whose result is the same parameter (possibly re-arranged)."""
ARITHMETIC = {
    "add", "radd", "iadd", "sub", "rsub", "isub", "mul", "rmul", "imul", "div", "truediv",
    "rtruediv", "addcmul", "addcdiv", "lerp", "where", "maximum", "minimum", "masked_fill",
}  # fmt: skip
"""Elementwise: the same parameter when the result keeps its shape, else a broadcast use."""
JOINS = {"cat", "concat", "concatenate", "stack", "hstack", "vstack"}
NONLINEAR = {
    "exp", "exp2", "expm1", "log", "log1p", "log2", "softplus", "sigmoid", "tanh", "sqrt",
    "rsqrt", "pow", "rpow", "abs", "relu", "silu", "gelu", "softmax", "log_softmax", "reciprocal",
    "sin", "cos", "clamp", "clip", "square",
}  # fmt: skip
NORMS = {
    "layer_norm", "group_norm", "batch_norm", "instance_norm", "rms_norm", "prelu",
    "native_layer_norm",
}  # fmt: skip
MATMULS = {
    "matmul", "mm", "bmm", "rmatmul", "addmm", "baddbmm", "addbmm", "mv", "addmv", "grouped_mm",
}  # fmt: skip
RNNS = {"lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell"}
ATTENTION = {"multi_head_attention_forward"}
IGNORED = {"size", "dim", "numel", "shape", "dtype", "device", "is_floating_point", "len"}


def _tensors(args: Iterable[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out += _tensors(a)
    return out


class UseTracer(TorchFunctionMode):
    """Records `Use`s of ``params`` (id -> tensor) while active; see the module docstring."""

    def __init__(self, params: Iterable[nn.Parameter], owners: dict[int, list[tuple[int, str]]]):
        super().__init__()
        self.alias: dict[int, tuple[int, Dims]] = {}
        self.keep: list[torch.Tensor] = []  # holds tracked views alive so no id is reused
        for p in params:
            self.alias[id(p)] = (id(p), tuple(range(p.ndim)))
        self.owners = owners  # param id -> [(module id, name)]
        self.stack: list[int] = []  # ids of the modules whose forward is running
        self.uses: dict[str, list[Use]] = {}

    # -- bookkeeping ------------------------------------------------------------------------
    def _track(self, out: Any, root: int, dims: Dims) -> None:
        if isinstance(out, torch.Tensor) and id(out) not in self.alias:
            if len(dims) != out.ndim:
                dims = (None,) * out.ndim
            self.alias[id(out)] = (root, dims)
            self.keep.append(out)

    def _record(self, root: int, use: Use) -> None:
        names = self.owners.get(root, [])
        depth = {m: i for i, m in enumerate(self.stack)}
        active = [(depth[m], n) for m, n in names if m in depth]
        if active:  # the innermost running module that owns the tensor (all its names)
            top = max(d for d, _ in active)
            chosen = [n for d, n in active if d == top]
        else:  # used by code outside its owner's forward: every name of it
            chosen = [n for _, n in names]
        for name in chosen:
            self.uses.setdefault(name, []).append(use)

    # -- the mode ---------------------------------------------------------------------------
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _name(func)
        if name in IGNORED:
            return out
        flat = _tensors(args) + _tensors(kwargs.values())
        hits = [(i, t) for i, t in enumerate(flat) if id(t) in self.alias]
        if not hits:
            return out
        for _, t in hits:
            root, dims = self.alias[id(t)]
            self._consume(name, args, kwargs, out, t, root, dims)
        return out

    def _consume(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: Any,
        t: torch.Tensor,
        root: int,
        dims: Dims,
    ) -> None:
        if name in VIEWS:
            if t is not args[0]:
                return
            if name == "getitem" and _gathers(args[1]):
                self._record(root, Use("gather", "index"))
                return
            for o in out if isinstance(out, (tuple, list)) else (out,):
                self._track(o, root, _view_dims(name, args, t, o, dims))
            return
        if name in ARITHMETIC or name in JOINS:
            if name in ARITHMETIC and isinstance(out, torch.Tensor) and out.shape == t.shape:
                self._track(out, root, dims)  # W * 0.5, W + B: still the parameter
            else:
                self._record(root, Use("broadcast", name))
            return
        layer = name in ATTENTION | RNNS or name == "linear" or name.startswith("conv")
        if name in NONLINEAR:
            self._record(root, Use("nonlinear", name))
        elif name in NORMS or (layer and t.ndim < 2):  # gains and biases
            self._record(root, Use("broadcast", name))
        elif name in MATMULS and name[:3] == "add" and t is args[0]:  # addmm's bias
            self._record(root, Use("broadcast", name))
        elif name in ("embedding", "embedding_bag", "index_select"):
            self._record(root, Use("gather", name))
        elif name in ATTENTION | RNNS or name == "linear":
            self._record(root, _contract(name, t, dims, 1, 0))
        elif name in MATMULS:
            self._record(root, _matmul(name, args, t, dims))
        elif name.startswith("conv"):
            self._record(root, _conv(name, args, kwargs, t, dims))
        elif name == "einsum":
            self._record(root, _einsum(args, t, dims))
        else:
            self._record(root, Use("unknown", name))


def _gathers(index: Any) -> bool:
    """Whether ``view[index]`` gathers rows by an integer or boolean tensor of 1 or more dims."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.ndim > 0 for i in items)


def _contract(op: str, t: torch.Tensor, dims: Dims, i: int, o: int | None) -> Use:
    """A contraction of view ``t`` over its dim ``i`` with output dim ``o`` (None: a
    matrix-vector product has no output dim of the parameter)."""
    fan_out = 1 if o is None else t.shape[o]
    out_dims = () if o is None else (dims[o],)
    return Use("contract", op, t.shape[i], fan_out, (dims[i],), out_dims)


def _matmul(op: str, args: tuple[Any, ...], t: torch.Tensor, dims: Dims) -> Use:
    """``a @ b``: a parameter on the right is contracted over its dim -2 (output dim -1), one on
    the left over its dim -1 (output dim -2); leading dims are a batch of matrices."""
    operands = list(args[1:3]) if op in ("addmm", "baddbmm", "addbmm", "addmv") else list(args)
    if op == "rmatmul":
        operands = operands[::-1]
    if t.ndim == 1:
        return _contract(op, t, dims, 0, None)
    if len(operands) > 1 and t is operands[1]:
        return _contract(op, t, dims, t.ndim - 2, t.ndim - 1)
    return _contract(op, t, dims, t.ndim - 1, t.ndim - 2)


def _conv(
    op: str, args: tuple[Any, ...], kwargs: dict[str, Any], t: torch.Tensor, dims: Dims
) -> Use:
    """Convolution weights are (out, in / groups, *kernel), transposed ones (in, out / groups,
    *kernel); fans are per group and include the kernel (the receptive field)."""
    groups = int(kwargs.get("groups", args[6] if len(args) > 6 else 1))
    receptive = math.prod(t.shape[2:])
    i, o = (0, 1) if "transpose" in op else (1, 0)
    size_in = t.shape[i] // (groups if i == 0 else 1)
    size_out = t.shape[o] // (groups if o == 0 else 1)
    return Use(
        "contract",
        op,
        size_in * receptive,
        size_out * receptive,
        (dims[i],),
        (dims[o],),
        groups,
    )


def _einsum(args: tuple[Any, ...], t: torch.Tensor, dims: Dims) -> Use:
    """Letters of the parameter missing from the output are contracted (fan_in); those in the
    output and in no other operand are its output (fan_out); the rest are a batch."""
    equation = str(args[0]).replace(" ", "")
    operands = list(args[1][0] if len(args) == 2 and isinstance(args[1], (list, tuple)) else ())
    operands = operands or [a for a in args[1:] if isinstance(a, torch.Tensor)]
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    if "." in equation or len(terms) != len(operands):
        return Use("unknown", "einsum with '...'")
    k = next(i for i, o in enumerate(operands) if o is t)
    if not rhs:  # implicit output: the letters that appear once, in order
        rhs = "".join(sorted(c for c in lhs if c.isalpha() and lhs.count(c) == 1))
    others = "".join(terms[:k] + terms[k + 1 :])
    own = terms[k]
    contracted = [i for i, c in enumerate(own) if c not in rhs]
    free = [i for i, c in enumerate(own) if c in rhs and c not in others]
    return Use(
        "contract",
        "einsum",
        math.prod(t.shape[i] for i in contracted),
        math.prod(t.shape[i] for i in free),
        tuple(dims[i] for i in contracted),
        tuple(dims[i] for i in free),
    )


def _view_dims(
    name: str, args: tuple[Any, ...], t: torch.Tensor, out: torch.Tensor, dims: Dims
) -> Dims:
    """The parameter dims behind ``out``'s dims, for the re-arrangements that keep them
    traceable; all None when they do not (then only sizes, not dims, are in the evidence)."""
    if not isinstance(out, torch.Tensor):
        return ()
    rest = [a for a in args[1:] if not isinstance(a, torch.Tensor)]
    if name in ("t", "T") or (name == "permute" and not rest):
        return dims[::-1]
    if name in ("transpose", "swapaxes", "swapdims", "mT"):
        i, j = (rest[0], rest[1]) if name != "mT" else (-2, -1)
        new = list(dims)
        new[i], new[j] = new[j], new[i]
        return tuple(new)
    if name == "permute":
        order = rest[0] if isinstance(rest[0], (list, tuple)) else rest
        return tuple(dims[i] for i in order)
    if name == "getitem":
        return _index_dims(args[1], dims)
    if name == "select" or name == "unbind":
        d = (rest[0] if rest else 0) % t.ndim
        return dims[:d] + dims[d + 1 :]
    if out.ndim == t.ndim and name not in ("view", "reshape", "view_as", "reshape_as"):
        return dims  # casts, expand, repeat, chunk, split, narrow
    if out.ndim > t.ndim and name in ("expand", "expand_as", "broadcast_to", "unsqueeze"):
        if name == "unsqueeze":
            d = rest[0] % out.ndim
            return dims[:d] + (None,) + dims[d:]
        return (None,) * (out.ndim - t.ndim) + dims
    # reshapes: follow the dims of size > 1 when the reshape only adds or drops 1s
    big = [(s, d) for s, d in zip(t.shape, dims) if s != 1]
    if [s for s in out.shape if s != 1] == [s for s, _ in big]:
        it = iter(d for _, d in big)
        return tuple(next(it) if s != 1 else None for s in out.shape)
    return (None,) * out.ndim


def _index_dims(index: Any, dims: Dims) -> Dims:
    """Dims after ``view[index]`` for ints, 0-d tensors, slices, None and Ellipsis."""
    items = list(index) if isinstance(index, tuple) else [index]
    n_used = sum(1 for i in items if i is not None and i is not Ellipsis)
    out: list[int | None] = []
    pos = 0
    for item in items:
        if item is Ellipsis:
            skip = len(dims) - n_used
            out += dims[pos : pos + skip]
            pos += skip
        elif item is None:
            out.append(None)
        elif isinstance(item, int) or (isinstance(item, torch.Tensor) and item.ndim == 0):
            pos += 1
        else:
            out.append(dims[pos])
            pos += 1
    return tuple(out) + dims[pos:]


def trace_uses(model: nn.Module, example: Any) -> dict[str, list[Use]]:
    """Run ``model`` once on ``example`` (a tensor, a tuple of positional arguments or a dict
    of keyword arguments, moved to the model's device) and return each parameter name's
    uses, in order. A parameter the forward pass never reaches has no entry. The model's
    buffers are restored afterwards (a BatchNorm in training mode updates its running
    statistics), so a model the caller keeps (the run's own) is left as it was."""
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    owners: dict[int, list[tuple[int, str]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            name = f"{mname}.{pname}" if mname else pname
            if (id(module), name) not in owners.setdefault(id(p), []):
                owners[id(p)].append((id(module), name))
    tracer = UseTracer(params, owners)

    def push(module: nn.Module, args: Any) -> None:
        tracer.stack.append(id(module))

    def pop(module: nn.Module, args: Any, output: Any) -> None:
        if tracer.stack and tracer.stack[-1] == id(module):
            tracer.stack.pop()

    moved = _to(example, device)
    buffers = [(b, b.clone()) for b in model.buffers()]
    hooks = [
        nn.modules.module.register_module_forward_pre_hook(push),
        nn.modules.module.register_module_forward_hook(pop, always_call=True),
    ]
    try:
        with tracer:
            if isinstance(moved, dict):
                model(**moved)
            elif isinstance(moved, tuple):
                model(*moved)
            else:
                model(moved)
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for b, kept in buffers:
                b.copy_(kept)
    return tracer.uses


def _to(example: Any, device: torch.device) -> Any:
    if isinstance(example, torch.Tensor):
        return example.to(device)
    if isinstance(example, dict):
        return {k: _to(v, device) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(_to(v, device) for v in example)
    return example
