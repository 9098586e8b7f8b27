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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

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
    model.load_state_dict(state["model"])
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


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(saved)``, keeping each state tensor's saved dtype: torch
    casts floating state to its parameter's dtype, which would turn Shampoo's bfloat16 inverse
    roots into float32 and change every later step."""
    optimizer.load_state_dict(saved)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entries in saved["state"].items():
        live = optimizer.state[params[index]]
        for key, value in entries.items():
            if torch.is_tensor(value) and live[key].dtype != value.dtype:
                live[key] = value.to(live[key].device)
