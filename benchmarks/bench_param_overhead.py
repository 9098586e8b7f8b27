"""Overhead of the parameterization and of the trainer's loop, as ratios measured side by side.

1. ``param_overhead_ratio_w<D>``: a muP nanodo (multiplier form: forward hooks, per-role param
   groups, this package's AdamW) against the same model in plain PyTorch (same weights, no
   hooks, one group). Both use torch's fused AdamW kernel, so the ratio isolates what the
   parameterization adds. Target <= 1.03 at widths 128 and 256.
2. ``trainer_overhead_ratio_w128``: the per-step time inside ``hptransfer.train.train`` (data,
   LR schedule, metrics records written to disk, progress callback) against the bare step of
   the same model: what the loop adds around the step. Eval steps are excluded (they do work).

Steps are timed in interleaved rounds; each ratio is the median over rounds of the per-round
ratio (see timing.py). Depth 4, head_dim 32, batch 16 x 128 tokens, float32.

Usage: ``python benchmarks/bench_param_overhead.py [--quick] [--threads N]``; ``run(quick)``.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
from timing import bench_args, interleaved, median_ratio

from hptransfer.assemble import build, loss_fn
from hptransfer.config import RunConfig
from hptransfer.models import build_model
from hptransfer.train import train

DEPTH, BATCH, SEQ, HEAD_DIM = 4, 16, 128, 32
CPU = torch.device("cpu")


def config(width: int) -> RunConfig:
    return RunConfig().replace(**{
        "model.width": width, "model.depth": DEPTH, "model.head_dim": HEAD_DIM,
        "param.name": "mup", "param.base_width": 64, "optimizer.name": "adamw",
        "train.seq_len": SEQ, "train.batch_size": BATCH,
    }).validate()  # fmt: skip


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    def step() -> None:
        loss = loss_fn(model, x, y, autocast=False)
        loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def param_overhead(width: int, rounds: int) -> dict[str, float]:
    s = build(config(width))
    plain = build_model("nanodo", width=width, depth=DEPTH, seq_len=SEQ, head_dim=HEAD_DIM)
    plain.load_state_dict(s.model.state_dict())
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=True)
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, 256, (BATCH, SEQ), generator=g) for _ in range(2))
    fns = {"param": _step(s.model, s.optimizer, x, y), "plain": _step(plain, plain_opt, x, y)}
    times = interleaved(fns, rounds, CPU, warmup=2)
    return {
        "param_ms": 1e3 * statistics.median(times["param"]),
        "plain_ms": 1e3 * statistics.median(times["plain"]),
        "ratio": median_ratio(times["param"], times["plain"]),
    }


def trainer_overhead(width: int, rounds: int, steps: int = 8) -> float:
    """Median over rounds of (median step time inside train()) / (median bare step time)."""
    cfg = config(width).replace(**{
        "train.steps": steps + 1, "train.eval_every": steps + 1, "train.warmup_steps": 2,
        "train.eval_batches": 1,
    })  # fmt: skip
    s = build(cfg)
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, 256, (BATCH, SEQ), generator=g) for _ in range(2))
    bare = _step(s.model, s.optimizer, x, y)
    bare()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            stamps: list[float] = []
            train(cfg, f"{tmp}/{r}", progress=lambda rec, s=stamps: s.append(time.perf_counter()))
            # step k's time: stamp k - stamp k-1; the last step (with the eval) is left out
            loop = [b - a for a, b in zip(stamps[:-2], stamps[1:-1])]
            bare_times = []
            for _ in range(len(loop)):
                t0 = time.perf_counter()
                bare()
                bare_times.append(time.perf_counter() - t0)
            ratios.append(statistics.median(loop) / statistics.median(bare_times))
    return statistics.median(ratios)


def run(quick: bool = False) -> dict[str, float]:
    results: dict[str, float] = {}
    for width in (128, 256):
        r = param_overhead(width, rounds=6 if quick else 20)
        results[f"param_overhead_ratio_w{width}"] = r["ratio"]
        results[f"param_step_ms_w{width}"] = r["param_ms"]
        print(
            f"width {width:>4}: parameterized {r['param_ms']:7.1f} ms  plain {r['plain_ms']:7.1f}"
            f" ms  ratio {r['ratio']:.3f}  (target <= 1.03)",
            flush=True,
        )
    ratio = trainer_overhead(128, rounds=2 if quick else 5)
    results["trainer_overhead_ratio_w128"] = ratio
    print(f"width  128: step inside train() / bare step {ratio:.3f}", flush=True)
    return results


if __name__ == "__main__":
    args = bench_args(__doc__, device=False)
    run(args.quick)
