"""What a sweep will cost before it starts: runs, training steps, tokens and an estimated time.

The time comes from the measured step cost of each distinct model on this machine: for every
distinct timing key (the model section, optimizer, batch shape, dtype and device; not the LR,
seed or parameterization, which do not change the work of a step), a spawned process builds
the run with the real trainer parts (`hptransfer.assemble.build`: its loss, batches, optimizer
step), on ``sweep.threads_per_run`` threads as a sweep's workers do, and times

- build_s: loading the corpus and building model, roles, parameterization and optimizer,
- step_s:  one training step (forward, backward, optimizer step), the mean of ``steps``
  steps after ``warmup`` untimed ones,
- eval_s:  one evaluation batch (a forward pass without gradients), after an untimed one.

Before the first timed config, one untimed build and step warm the process up (imports, the
corpus read and tokenized, the allocator): a sweep's worker pays that once, not once per run,
and charging it to every run of the first timing key made the estimate of a small sweep 5x the
time measured (muon grid of benchmarks/bench_halving.py: 24 s of the first build, per run).

A run of S steps with eval_every E and B eval batches then costs

    run_s = build_s + S * step_s + n_evals * B * eval_s,   n_evals = ceil(S / E)

and the sweep takes  max(sum of run_s / concurrency, longest run_s),  with concurrency =
min(workers, runs), and on CPU also at most cpu_count // threads_per_run (more workers than
that share cores and gain nothing). Runs that diverge stop early, so this is an upper bound for
the grid it covers.

An adaptive search (sweep/search.py) adds LRs around each optimum as results come in: how many
depends on the losses, so the estimate covers the starting grid, plus the fewest runs the
search can add. Whatever the losses, each search evaluates both neighbours of its best LR at
each refinement spacing (2^(1/2), then ``sweep.lr_refine``): at least the fewest of those
neighbours off the starting grid over the grid's LRs (the best is one of them), each run for
every seed and costing the mean run of its search. With ``sweep.refine = "fit"`` a search may
stop as soon as its fit's vertex falls on an LR it has, so the fewest it adds are the points a
parabola needs beyond the starting grid's (3 LRs), often none: the estimate is then close to
the starting grid's and a search typically adds 2-3 runs a seed (docs/sweeps.md).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hptransfer.config import DEFAULT_REFINE, Refine, RunConfig, from_dict
from hptransfer.sweep.search import LRSearch
from hptransfer.sweep.spec import Run

WARMUP_STEPS = 1
TIMED_STEPS = 3


@dataclass(frozen=True)
class StepCost:
    """Measured seconds of one timing key: build, one training step, one eval batch."""

    build_s: float
    step_s: float
    eval_s: float


@dataclass(frozen=True)
class Cost:
    """The estimate for a list of runs (see the module docstring)."""

    runs: int
    steps: int
    tokens: int
    run_seconds: float
    """Sum over runs of run_s: the compute, one run at a time."""
    seconds: float
    """Estimated wall time at ``concurrency`` runs at once."""
    concurrency: int
    timed: int
    """Distinct timing keys measured."""
    adaptive: bool = False
    """An adaptive sweep: its searches add LRs to the starting grid as results come in."""
    added_runs: int = 0
    """Fewest runs the adaptive searches add to the starting grid."""
    added_seconds: float = 0.0
    """Wall time of the starting grid and those runs."""

    def lines(self) -> list[str]:
        """The summary printed after a dry run's run list."""
        out = [
            f"{self.runs} runs, {self.steps:,} training steps, {self.tokens:,} tokens",
            f"estimated time: {duration(self.seconds)} at {self.concurrency} run(s) at once "
            f"({duration(self.run_seconds)} of runs; step cost measured on this machine for "
            f"{self.timed} distinct model(s))",
        ]
        if self.adaptive:
            least = (
                f"at least {self.added_runs} runs: at least {duration(self.added_seconds)} in all"
                if self.added_runs
                else "possibly none"
            )
            out.append(
                "adaptive: this covers the starting grid; the search adds LRs around each "
                f"optimum as results come in, {least}"
            )
        return out


def duration(seconds: float) -> str:
    """Seconds as '42 s', '12.5 min' or '3.2 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def timing_key(cfg: RunConfig) -> str:
    """What decides the work of one step: model, data, optimizer, batch shape, dtype, device."""
    d = cfg.to_dict()
    t = d["train"]
    o = d["optimizer"]
    return json.dumps(
        {
            "model": d["model"],
            "data": d["data"],
            "optimizer": [o["name"], o.get("options")],
            "train": [t["batch_size"], t["seq_len"], t["dtype"], t["device"], t["grad_clip"] > 0],
        },
        sort_keys=True,
        default=str,
    )


def n_evals(cfg: RunConfig) -> int:
    """Evaluations of a run: every eval_every steps and after the last step (train.train)."""
    return math.ceil(cfg.train.steps / cfg.train.eval_every)


def concurrency(workers: int, runs: int, threads: int, device: str, cpus: int | None) -> int:
    """Runs at once: the workers, no more than the runs, and on CPU no more than the cores
    hold at ``threads`` each."""
    n = max(1, min(workers, runs))
    if device == "cpu":
        n = min(n, max(1, (cpus or 1) // threads))
    return n


def estimate(
    runs: Sequence[Run],
    time_keys: Callable[[list[RunConfig]], list[StepCost]],
    workers: int,
    threads: int = 1,
    cpus: int | None = None,
    search_of: Callable[[Run], Hashable] | None = None,
    fine: float = 2**0.25,
    refine: Refine = DEFAULT_REFINE,
) -> Cost:
    """The cost of ``runs``; ``time_keys`` measures one config per distinct timing key (in
    order) and returns their StepCosts (`measure`, or a fake in the tests).

    With ``search_of`` (an adaptive sweep: run -> its LR search, e.g. SweepSpec.settings_key)
    the fewest runs the searches add are costed too, ``fine`` being ``sweep.lr_refine`` and
    ``refine`` ``sweep.refine``.
    """
    firsts: dict[str, RunConfig] = {}
    for r in runs:
        firsts.setdefault(timing_key(r.config), r.config)
    costs = dict(zip(firsts, time_keys(list(firsts.values())))) if firsts else {}
    per_run = []
    steps = tokens = 0
    for r in runs:
        cfg, c = r.config, costs[timing_key(r.config)]
        t = cfg.train
        per_run.append(c.build_s + t.steps * c.step_s + n_evals(cfg) * t.eval_batches * c.eval_s)
        steps += t.steps
        tokens += t.steps * t.batch_size * t.seq_len
    device = runs[0].config.train.device if runs else "cpu"
    n = concurrency(workers, len(runs), threads, device, cpus if cpus else os.cpu_count())
    total = sum(per_run)
    wall = max(total / n, max(per_run, default=0.0))
    cost = Cost(len(runs), steps, tokens, total, wall, n, len(firsts))
    if search_of is None:
        return cost
    added, added_s = fewest_added(runs, per_run, search_of, fine, refine)
    return replace(
        cost, adaptive=True, added_runs=added, added_seconds=max((total + added_s) / n, wall)
    )


def _neighbours(log2_lr: float, fine: float) -> set[float]:
    """log2 of both neighbours of an LR at each refinement spacing (LRSearch.step, fine)."""
    return {
        round(log2_lr + sign * math.log2(spacing), 6)
        for spacing in (LRSearch.step, fine)
        for sign in (-1, 1)
    }


def fewest_added(
    runs: Sequence[Run], per_run: Sequence[float], search_of: Callable[[Run], Hashable],
    fine: float, refine: Refine = DEFAULT_REFINE,
) -> tuple[int, float]:  # fmt: skip
    """Fewest runs the adaptive searches add, and their seconds (module docstring)."""
    searches: dict[Hashable, list[int]] = {}
    for i, r in enumerate(runs):
        searches.setdefault(search_of(r), []).append(i)
    added = 0
    seconds = 0.0
    for idx in searches.values():
        start = {round(math.log2(runs[i].config.optimizer.lr), 6) for i in idx}
        seeds = len({runs[i].config.seed for i in idx})
        if refine == "fit":  # a parabola through 3 LRs; its vertex may be one of them
            n = seeds * max(0, 3 - len(start))
        else:
            n = seeds * min(len(_neighbours(b, fine) - start) for b in start)
        added += n
        seconds += n * sum(per_run[i] for i in idx) / len(idx)
    return added, seconds


def measure(configs: list[RunConfig], threads: int = 1) -> list[StepCost]:
    """StepCosts of ``configs``, timed in a spawned process (this one stays torch-free)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    tables = [c.to_dict() for c in configs]
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(time_configs, tables, threads).result()


def time_configs(
    tables: list[dict[str, Any]],
    threads: int,
    warmup: int = WARMUP_STEPS,
    steps: int = TIMED_STEPS,
) -> list[StepCost]:
    """Time each config (as a dict) with the trainer's parts on ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    if tables:  # warm the process up: imports, corpus, allocator (module docstring)
        time_config(from_dict(tables[0]), warmup=1, steps=0)
    return [time_config(from_dict(table), warmup, steps) for table in tables]


def time_config(cfg: RunConfig, warmup: int = WARMUP_STEPS, steps: int = TIMED_STEPS) -> StepCost:
    """Build ``cfg``'s run and time its steps and one eval batch (module docstring)."""
    import torch

    from hptransfer import data as data_mod
    from hptransfer.assemble import build

    t = cfg.train
    device = torch.device(t.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    s = build(cfg, data_mod.load_corpus(cfg.data))
    s.model.to(device)
    build_s = time.perf_counter() - start
    batches = s.batches  # the run's own: tokens, or model.batch's

    def step(i: int) -> None:
        x, y = (b.to(device) for b in batches.get(i))
        loss = s.loss(s.model, x, y)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), t.grad_clip)
        s.optimizer.step()

    for i in range(warmup):
        step(i)
    sync()
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync()
    step_s = (time.perf_counter() - start) / max(1, steps)
    x, y = (b.to(device) for b in batches.get(0))
    with torch.no_grad():
        s.loss(s.model, x, y)  # untimed: the first eval batch pays one-time costs
        sync()
        start = time.perf_counter()
        s.loss(s.model, x, y)
        sync()
        eval_s = time.perf_counter() - start
    return StepCost(build_s, step_s, eval_s)
