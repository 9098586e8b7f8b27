"""Where a run executes: the device, data parallel (DDP) or fully sharded (FSDP2) training
over several processes, and the optional ``torch.compile`` of the training forward.

Launch several processes with torchrun (gloo on CPU, NCCL with ``train.device = "cuda"``)::

    torchrun --nproc_per_node 2 -m hptransfer train RECIPE --set train.distributed=fsdp

Why the result equals one process's run with the same global batch ``train.batch_size``:

* every rank draws the same global batch (``Batches`` is keyed by (seed, step)) and keeps rows
  ``[r * b, (r + 1) * b)`` with ``b = batch_size / world_size``; its loss is the mean over its
  rows, and DDP / FSDP2 average the gradients over ranks, so the update sees the global-batch
  mean gradient. Logged train and eval losses are averaged over ranks the same way;
* every rank builds and parameterizes the full model from the same seed before wrapping, so the
  init is the single-process init. Roles come from the model factory on the meta device
  (a side table, never tensor attributes, which is what breaks microsoft/mup under FSDP, its
  issue #59); the multipliers are forward hooks on leaf modules, which DDP and FSDP2 leave in
  place; and the optimizer's param groups are rebuilt from the parameter names each group
  records, because FSDP2 swaps every parameter for a sharded DTensor under the same name.

Only rank 0 writes the run directory, prints progress and reports to trackers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from hptransfer.config import ConfigError, RunConfig
from hptransfer.optim import registry

# Optimizers whose update runs on FSDP2's sharded DTensor parameters (their specs' ``fsdp``;
# checked against one process in tests/test_distributed.py). adam_ps and adafactor take in-place
# steps on norms that DTensor cannot keep sharded; sophia estimates curvature per rank.
FSDP_OPTIMIZERS = tuple(n for n in registry.names() if registry.get(n).fsdp)
T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """This process's place in the run: mode ("none", "ddp" or "fsdp"), rank, world size,
    device, and whether this module started the process group (and so must end it)."""

    mode: str = "none"
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch(
        self, x_BxT: torch.Tensor, y_BxT: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global batch, on this rank's device."""
        if self.world_size > 1:
            b = x_BxT.shape[0] // self.world_size
            x_BxT, y_BxT = (t[self.rank * b : (self.rank + 1) * b] for t in (x_BxT, y_BxT))
        if self.device.type == "cpu":
            return x_BxT, y_BxT
        return x_BxT.to(self.device, non_blocking=True), y_BxT.to(self.device, non_blocking=True)

    def main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then on the other ranks, which find what rank 0 wrote (a
        tokenizer trained into the run directory) instead of writing it again."""
        if self.world_size == 1:
            return fn()
        out = fn() if self.is_main else None
        dist.barrier()
        return fn() if not self.is_main else out  # type: ignore[return-value]

    def mean(self, value: torch.Tensor | float) -> float:
        """``value`` averaged over ranks, as a float (one process: ``float(value)``)."""
        if self.world_size == 1:
            return value.item() if isinstance(value, torch.Tensor) else float(value)
        buf = torch.as_tensor(value, dtype=torch.float64).detach().reshape(1).to(self.device)
        dist.all_reduce(buf)
        return buf.item() / self.world_size

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (one process: ``flag``), for decisions that every
        rank must take together, such as a checkpoint due by rank 0's clock."""
        if self.world_size == 1:
            return flag
        buf = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(buf, src=0)
        return bool(buf.item())


def resolve_mode(setting: str, world_size: int) -> str:
    """train.distributed -> none / ddp / fsdp for ``world_size`` processes."""
    if setting == "auto":
        return "ddp" if world_size > 1 else "none"
    if setting == "none" and world_size > 1:
        raise ConfigError(
            f'train.distributed = "none" but {world_size} processes were launched: '
            'set it to "ddp" or "fsdp", or launch one process'
        )
    return setting


def start(cfg: RunConfig) -> Context:
    """Check ``cfg`` against the launch environment, start the process group if needed (torchrun
    sets RANK, LOCAL_RANK, WORLD_SIZE; a caller may also have started one) and pick the device."""
    t = cfg.train
    if t.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError('train.device = "cuda" but torch sees no GPU; use "cpu"')
    started = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if started else int(os.environ.get("WORLD_SIZE", "1"))
    mode = resolve_mode(t.distributed, world)
    if mode == "none":
        return Context(device=torch.device(t.device))
    if not started and "RANK" not in os.environ:
        raise ConfigError(
            f'train.distributed = "{mode}" needs a launcher: '
            "torchrun --nproc_per_node N -m hptransfer train ..."
        )
    if t.batch_size % world:
        raise ConfigError(
            f"train.batch_size={t.batch_size} does not split evenly over {world} processes; "
            "make it a multiple of the process count"
        )
    name, spec = cfg.optimizer.name, registry.get(cfg.optimizer.name)
    if spec.not_data_parallel:
        raise ConfigError(f"optimizer {name} cannot train data parallel: {spec.not_data_parallel}")
    if mode == "fsdp" and not spec.fsdp:
        raise ConfigError(
            f"optimizer {name} does not run on FSDP2's sharded parameters; use "
            f"train.distributed = ddp or one of {', '.join(FSDP_OPTIMIZERS)}"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if t.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not started:
        cuda = device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Context(mode, dist.get_rank(), world, device, owns_group=not started)


def prepare(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    param_groups: list[dict],
    cfg: RunConfig,
    ctx: Context,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Move ``model`` to the device, wrap (ddp) or shard (fsdp) it, compile it if asked.

    Returns the module the training step calls and the optimizer to step. ``model`` itself stays
    the plain (fsdp: sharded in place) module, under its own parameter names, for evaluation and
    diagnostics. With fsdp the optimizer is rebuilt over the sharded parameters from the names in
    ``param_groups`` (the parameterization's), so every group keeps its LR, epsilon and decay.
    """
    from hptransfer.optim import build_optimizer

    model.to(ctx.device)  # in place: the optimizer's parameters are the moved ones
    train_model = model
    if ctx.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids)
    elif ctx.mode == "fsdp":
        shard(model, ctx)
        named = dict(model.named_parameters(remove_duplicate=False))
        groups = [{**g, "params": [named[n] for n in g["param_names"]]} for g in param_groups]
        hparams = cfg.optimizer.hparams()
        if cfg.optimizer.name == "sgd" and "fused" not in hparams:
            hparams.setdefault("foreach", True)  # DTensor has no fused SGD kernel
        optimizer = build_optimizer(cfg.optimizer.name, groups, **hparams)
    if cfg.train.compile:
        # torch.compile of a Module returns an OptimizedModule (a Module); its stubs say Callable
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    return train_model, optimizer


def shard(model: nn.Module, ctx: Context) -> None:
    """FSDP2 in place: each element of every ModuleList (the blocks) is its own unit, the rest
    of the parameters (embeddings, final norm, head) belong to the root unit. Units are made
    bottom up, as FSDP2 requires when ModuleLists nest."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    blocks = [b for m in model.modules() if isinstance(m, nn.ModuleList) for b in m]
    for block in reversed(blocks):  # modules() lists parents before their children
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (an FSDP2-sharded parameter, or a statistic of one) as a plain tensor holding
    its full value; plain tensors pass through. A collective for DTensors: every rank calls it."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def finish(ctx: Context) -> None:
    """End the process group if :func:`start` began it (after a barrier: a rank that leaves
    while another still talks to it can abort the whole job under gloo)."""
    if ctx.owns_group:
        dist.barrier()
        dist.destroy_process_group()
