"""Overhead of the alignment probes: whole training runs with train.align_every = 1, 10, 50
against the same run without probes (nanodo width 256, mup + adam), timed side by side in this
process, interleaved, ratio of medians. Also the two parts of the cost, timed interleaved on one
model: a training step and one probe measurement (an extra forward pass on train.align_batch
sequences of the step-0 batch plus three float64 matmuls per linear layer), whose ratio predicts
the overhead at any k as probe / (k * step). The machine is shared and noisy: compare ratios,
not absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hptransfer.assemble import build, loss_fn
from hptransfer.config import RunConfig
from hptransfer.data import Batches
from hptransfer.probes.alignment import AlignmentProbe
from hptransfer.train import train

KS = (1, 10, 50)


def config(width: int, steps: int, align_every: int = 0) -> RunConfig:
    return RunConfig().replace(
        **{
            "model.width": width,
            "model.depth": 2,
            "model.head_dim": 32,
            "param.name": "mup",
            "param.base_width": 64,
            "optimizer.name": "adam",
            "train.steps": steps,
            "train.eval_every": steps,  # one eval at the end, the same in every run
            "train.eval_batches": 2,
            "train.align_every": align_every,
        }
    )


def whole_runs(width: int, steps: int, repeats: int) -> dict[int, float]:
    """Median wall time of train() per align_every (0 = no probes), interleaved."""
    times: dict[int, list[float]] = {k: [] for k in (0, *KS)}
    for i in range(repeats):
        order = list(times) if i % 2 == 0 else list(reversed(times))
        for k in order:
            t0 = time.perf_counter()
            train(config(width, steps, k).validate())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def parts(width: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one training step and of one probe measurement."""
    cfg = config(width, 10).validate()
    s = build(cfg)
    batches = Batches(s.corpus.train, cfg.train.batch_size, cfg.train.seq_len, cfg.seed)
    x0 = batches.get(0)[0][: cfg.train.align_batch]  # the sequences train() probes
    probe = AlignmentProbe(s.model, lambda: s.model(x0))

    def step(i: int) -> None:
        x, y = batches.get(i)
        loss = loss_fn(s.model, x, y, autocast=False)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()

    step(0), probe.measure()  # warm up
    t_step, t_probe = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        step(i + 1)
        t1 = time.perf_counter()
        probe.measure()
        t_probe.append(time.perf_counter() - t1)
        t_step.append(t1 - t0)
    return statistics.median(t_step), statistics.median(t_probe)


def run(quick: bool = False, width: int = 256) -> dict:
    torch.set_num_threads(1)  # steadier on a shared machine; the ratios are what count
    results: dict[str, float] = {}
    t_step, t_probe = parts(width, repeats=5 if quick else 20)
    print(
        f"width {width}: train step {t_step * 1e3:.0f} ms, probe {t_probe * 1e3:.0f} ms "
        f"(= {t_probe / t_step:.2f} steps)"
    )
    for k in KS:
        results[f"align_predicted_overhead_k{k}"] = t_probe / (k * t_step)
        print(f"  predicted overhead at k = {k:>2}: {100 * t_probe / (k * t_step):6.1f} %")
    steps = 50 if quick else 100
    med = whole_runs(width, steps, repeats=1 if quick else 3)
    print(f"whole runs ({steps} steps, median of {1 if quick else 3}): no probes {med[0]:.1f} s")
    for k in KS:
        ratio = med[k] / med[0]
        results[f"align_run_ratio_k{k}"] = ratio
        target = "  (target < 1.05)" if k == 50 else ""
        print(f"  align_every = {k:>2}: {med[k]:.1f} s, ratio {ratio:.3f}{target}")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--width", type=int, default=256)
    args = ap.parse_args()
    run(args.quick, args.width)
