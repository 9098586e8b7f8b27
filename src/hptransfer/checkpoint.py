"""What a checkpoint holds, so that a resumed run continues bitwise where it stopped.

A run's state after step ``s - 1`` (``s`` steps taken) is

- the model's parameters and buffers (``state_dict``),
- the optimizer's ``state_dict``: moments, step counters, Shampoo's statistics and inverse
  roots, Sophia's Hessian estimate, and the param groups' current LRs,
- the LR schedule's position (``LambdaLR.state_dict``: its step count and last LRs),
- the random number generators: torch's CPU generator (Sophia's Hutchinson / sampled labels,
  dropout) and every CUDA device's when CUDA is initialized,
- the loop position: ``s`` steps taken, the number of metrics.jsonl records written (equal to
  ``s``: one per step), the train losses, the evals so far, the step-0 loss that divergence is
  judged against, and the wall time spent.

The data sampler needs no state: `hptransfer.data.Batches` draws batch ``s`` from a generator
seeded by (seed, s), so the step is its position. The alignment probe's reference (W0, x0) is
the initial model, rebuilt from the seed before the checkpoint is loaded.

Everything is a tensor, number, string, list or dict, so `store.RunDir.load_checkpoint` reads
it with ``torch.load(weights_only=True)``. `store.RunDir` owns the file (checkpoint.pt,
written atomically).

Under torchrun (ddp) every rank takes part in one ``torch.distributed.checkpoint`` (DCP)
directory instead (`store.RunDir.save_sharded_checkpoint`). `to_tensors` flattens the state into
tensors alone: each tensor under its path (``model/blocks.0.attn.q.weight``,
``optimizer/state/3/exp_avg``), this rank's generators under ``rng/<rank>/...``, and the rest
(numbers, strings, the nesting, the world size) as a JSON ``skeleton`` in a uint8 tensor. So
nothing is unpickled on load (DCP would ``torch.load`` other objects with weights_only=False),
and every rank writes identical entries but its generators, which DCP stores once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hptransfer import store
from hptransfer.distributed import Context
from hptransfer.errors import ConfigError

FORMAT = 1
"""Version of the checkpoint layout; a checkpoint of another version is refused."""


@dataclass
class Position:
    """Where the training loop stands after ``steps`` steps."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    """(steps taken, eval loss) of every evaluation so far."""
    loss0: float | None = None
    """The step-0 train loss (divergence is judged against it)."""
    elapsed_s: float = 0.0
    """Wall time of the attempts before this one."""


def capture(
    run_id: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    position: Position,
) -> dict[str, Any]:
    """The state of a run after ``position.steps`` steps, ready for `RunDir.save_checkpoint`."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": FORMAT,
        "run_id": run_id,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": rng,
        "steps": position.steps,
        "records": position.steps,
        "losses": list(position.losses),
        "evals": [[s, v] for s, v in position.evals],
        "loss0": position.loss0,
        "elapsed_s": position.elapsed_s,
    }


def restore(
    state: dict[str, Any],
    run_id: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    where: str,
) -> Position:
    """Load ``state`` (from `capture`) into the model, optimizer, schedule and generators of
    run ``run_id``; return the loop position. ``where`` names the file in errors."""
    if state.get("format") != FORMAT:
        raise ConfigError(f"{where}: checkpoint format {state.get('format')!r}, need {FORMAT}")
    if state.get("run_id") != run_id:
        raise ConfigError(
            f"{where} belongs to run {state.get('run_id')}, not {run_id}; remove it or choose "
            "another run directory"
        )
    model.load_state_dict(_sharded_like(state["model"], model.state_dict()))
    _load_optimizer(optimizer, state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return Position(
        steps=state["steps"],
        losses=list(state["losses"]),
        evals=[(int(s), v) for s, v in state["evals"]],
        loss0=state["loss0"],
        elapsed_s=state["elapsed_s"],
    )


def _sharded_like(values: dict[str, Any], live: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``values`` with each full tensor whose ``live`` counterpart is an FSDP2-sharded DTensor
    of the same shape sharded the same way (a checkpoint loads whole on every rank)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    out = dict(values)
    for key, value in values.items():
        target = live.get(key)
        if (
            isinstance(target, DTensor)
            and torch.is_tensor(value)
            and not isinstance(value, DTensor)
        ):
            if value.shape == target.shape:
                out[key] = distribute_tensor(
                    value.to(target.device), target.device_mesh, target.placements
                )
    return out


def save(run: store.RunDir, ctx: Context, state: dict[str, Any]) -> None:
    """Write ``state`` (from `capture`) as the run's latest checkpoint: checkpoint.pt from one
    process, a checkpoint-<steps> directory from every rank of a torchrun job."""
    if ctx.world_size == 1:
        run.save_checkpoint(state)
    else:
        run.save_sharded_checkpoint(to_tensors(state, ctx.rank, ctx.world_size), state["steps"])


def load(run: store.RunDir, ctx: Context) -> tuple[dict[str, Any], str] | None:
    """The run's latest checkpoint as `capture` returned it on this rank, and where it lies;
    None without one. A checkpoint of the other kind (one process / torchrun) is refused."""
    one, sharded = run.path / store.CHECKPOINT, run.sharded_checkpoints()
    if ctx.world_size == 1 and sharded:
        raise ConfigError(
            f"{sharded[-1]} was written under torchrun; resume it with torchrun, or remove it"
        )
    if ctx.world_size == 1:
        state = run.load_checkpoint()
        return None if state is None else (state, str(one))
    if one.is_file():
        raise ConfigError(f"{one} was written by one process; resume it so, or remove it")
    found = run.load_sharded_checkpoint()
    if found is None:
        return None
    return from_tensors(found[0], ctx.rank, ctx.world_size, found[1]), found[1]


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(saved)``, keeping each state tensor's saved dtype: torch
    casts floating state to its parameter's dtype, which would turn Shampoo's bfloat16 inverse
    roots into float32 and change every later step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entries in saved["state"].items():  # fsdp: moments sharded like their parameter
        like = {k: params[index] for k, v in entries.items() if torch.is_tensor(v)}
        entries.update(_sharded_like(entries, like))
    optimizer.load_state_dict(saved)
    for index, entries in saved["state"].items():
        live = optimizer.state[params[index]]
        for key, value in entries.items():
            if torch.is_tensor(value) and live[key].dtype != value.dtype:
                live[key] = value.to(live[key].device)


def to_tensors(state: dict[str, Any], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """`capture`'s ``state`` on rank ``rank`` of ``world_size`` as a flat dict of tensors."""
    flat: dict[str, torch.Tensor] = {}
    body = {k: v for k, v in state.items() if k != "rng"}
    skeleton = {"world_size": world_size, "state": _encode(body, "", flat)}
    _encode(state["rng"], f"rng/{rank}/", flat)
    text = json.dumps(skeleton).encode()
    flat["skeleton"] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return flat


def from_tensors(flat: dict[str, torch.Tensor], rank: int, world_size: int, where: str) -> dict:
    """The state `to_tensors` flattened, as `capture` returned it on this rank."""
    skeleton = json.loads(bytes(flat["skeleton"].tolist()))
    if skeleton["world_size"] != world_size:
        raise ConfigError(
            f"{where} was written by {skeleton['world_size']} processes; resume it with as "
            f"many (torchrun --nproc_per_node {skeleton['world_size']}), not {world_size}"
        )
    state = _decode(skeleton["state"], flat)
    prefix = f"rng/{rank}/"
    state["rng"] = {"torch": flat[prefix + "torch"]}
    cuda = sorted((k for k in flat if k.startswith(prefix + "cuda/")), key=_last_int)
    if cuda:
        state["rng"]["cuda"] = [flat[k] for k in cuda]
    return state


def _last_int(key: str) -> int:
    return int(key.rsplit("/", 1)[1])


def _encode(value: Any, path: str, flat: dict[str, torch.Tensor]) -> Any:
    """JSON for ``value`` with each tensor moved to ``flat[path...]`` and named by its key.
    Dicts become {"d": [[key, value], ...]} (keys keep their type: optimizer state is keyed by
    int), lists {"l": [...]}, tuples {"u": [...]}, tensors {"t": key}."""
    if torch.is_tensor(value):
        flat[path.rstrip("/")] = value
        return {"t": path.rstrip("/")}
    if isinstance(value, dict):
        return {"d": [[k, _encode(v, f"{path}{k}/", flat)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{path}{i}/", flat) for i, v in enumerate(value)]
        return {"l" if isinstance(value, list) else "u": items}
    return value


def _decode(value: Any, flat: dict[str, torch.Tensor]) -> Any:
    if not isinstance(value, dict):
        return value
    if "t" in value:
        return flat[value["t"]]
    if "d" in value:
        return {k: _decode(v, flat) for k, v in value["d"]}
    if "l" in value:
        return [_decode(v, flat) for v in value["l"]]
    return tuple(_decode(v, flat) for v in value["u"])
