"""Checkpoint overhead: training-loop time with ``train.checkpoint_every = N`` over without.

Setup: the default recipe's model (nanodo, width 128, Adam, float32) trained by
`hptransfer.train.train` into a temporary run directory for ``2 N + 1`` steps, eval only at the
end. The timed span runs from the record of step 0 to that of step 2N (``progress`` callback),
so it holds 2N steps and, with checkpoints on, the two checkpoints written after steps N and 2N
(model, optimizer state, RNG; fsynced and renamed into place): the model build and the final
evaluation are outside it. The two contenders are timed in interleaved rounds (`timing`), and
the ratio is the median over rounds of (span with checkpoints) / (span without).

On a loaded machine that ratio's noise (a few %) hides the cost, so the time spent inside
`checkpoint.save` is also measured directly: ``checkpoint_write_ms`` (median per checkpoint) and
``checkpoint_overhead_direct_every<N>`` = 1 + write time / (N x step time without checkpoints).

Usage: ``python benchmarks/bench_checkpoint.py [--quick] [--every N ...] [--threads N]
[--device auto|cpu|cuda]``; ``run(quick, device)`` returns ``checkpoint_overhead_every<N>``
ratios, the step time without checkpoints and the checkpoint's size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from timing import median_ratio, resolve_device

from hptransfer import checkpoint, store
from hptransfer.config import RunConfig
from hptransfer.train import train

DEFAULT_EVERY = (100,)


def loop_seconds(every: int, on: bool, device: str, writes: list[float] | None = None) -> float:
    """Seconds from step 0's record to step 2N's in one run (N = ``every``); with ``writes``,
    the seconds of each checkpoint write are appended to it."""
    steps = 2 * every + 1
    changes = {"train.steps": steps, "train.eval_every": steps, "train.eval_batches": 1}
    changes["train.device"] = device
    if on:
        changes["train.checkpoint_every"] = every
    cfg = RunConfig().replace(**changes).validate()
    marks: dict[int, float] = {}

    def progress(record: dict) -> None:
        marks[record["step"]] = time.perf_counter()

    save = checkpoint.save

    def timed_save(*args: object) -> None:
        t0 = time.perf_counter()
        save(*args)  # type: ignore[arg-type]
        if writes is not None:
            writes.append(time.perf_counter() - t0)

    checkpoint.save = timed_save  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, Path(tmp) / "run", progress=progress)
    finally:
        checkpoint.save = save
    return marks[steps - 1] - marks[0]


def checkpoint_bytes(every: int) -> int:
    """Size of the checkpoint this benchmark writes."""
    cfg = RunConfig().replace(**{"train.steps": every + 2, "train.checkpoint_every": every})
    sizes: list[int] = []

    def progress(record: dict) -> None:
        if record["step"] == every:  # the checkpoint after step every - 1 is on disk
            sizes.append((out / store.CHECKPOINT).stat().st_size)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        train(cfg.validate(), out, progress=progress)
    return sizes[0]


def run(quick: bool, device: str = "cpu", everies: tuple[int, ...] = DEFAULT_EVERY) -> dict:
    device = resolve_device(device).type
    rounds = 2 if quick else 4
    out: dict[str, float] = {}
    for every in everies:
        times: dict[bool, list[float]] = {False: [], True: []}
        writes: list[float] = []
        for r in range(rounds):  # alternate which contender goes first
            for on in (r % 2 == 0, r % 2 == 1):
                times[on].append(loop_seconds(every, on, device, writes))
        out[f"checkpoint_overhead_every{every}"] = round(median_ratio(times[True], times[False]), 4)
        step_s = min(times[False]) / (2 * every)
        write_s = sorted(writes)[len(writes) // 2]
        out[f"step_ms_every{every}"] = round(1000 * step_s, 2)
        out["checkpoint_write_ms"] = round(1000 * write_s, 1)
        out[f"checkpoint_overhead_direct_every{every}"] = round(1 + write_s / (every * step_s), 4)
    out["checkpoint_mb"] = round(checkpoint_bytes(everies[0]) / 2**20, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 4")
    parser.add_argument("--every", type=int, nargs="+", default=list(DEFAULT_EVERY))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for key, value in run(args.quick, args.device, tuple(args.every)).items():
        print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
