"""Model FLOPs utilization (MFU) of the trainer's step, float32 and bfloat16 autocast.

The step is the trainer's: a muP nanodo built by ``hptransfer.assemble.build`` (forward hooks,
per-role param groups, the default fused Adam), ``loss_fn`` with the loss in float32, backward,
optimizer step, and the loss read back as the trainer does. Depth 4, head_dim 64, batch 16 x 128
tokens (on a GPU: 32 x 512).

Model FLOPs per step follow PaLM's count: tokens x (6 N + 12 L D T), N the non-embedding
parameters (the LM head included), L blocks, D width, T sequence length (attention FLOPs not
discounted for the causal mask). MFU = model FLOP/s / the matmul peak of the same dtype, an
n x n x n matmul measured in the same rounds, so load from other processes hits both alike.
``bf16_speedup`` is float32 step time / bfloat16 step time (= the ratio of tokens/s).
Each width's line prints every ratio next to the peak it is relative to
(``peak_gflops_<dtype>_w<D>``, the median over its rounds).

A machine without a bf16 matmul kernel (an AVX2 CPU: torch falls back to a scalar loop, ~0.1
GFLOP/s, and one width-512 step would take ~20 minutes) is detected by a 512^3 probe matmul
before any step is built: if bf16 runs at under a quarter of float32's speed there, the bf16
keys say so and only float32 is measured.

Usage: ``python benchmarks/bench_mfu.py [--quick] [--threads N] [--device auto|cpu|cuda]``;
``run(quick, device)`` returns flat keys ``mfu_fp32_w512``, ``mfu_bf16_w512``,
``bf16_speedup_w512``, ``step_ms_fp32_w512``, ``peak_gflops_fp32``, ...
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from timing import bench_args, matmul_flops, median_ratio, resolve_device, time_call

from hptransfer.assemble import build, loss_fn
from hptransfer.config import RunConfig

WIDTHS = (128, 256, 512, 1024)
QUICK_WIDTHS = (128, 512)
GPU_WIDTHS = (1024, 2048, 4096)
HEAD_DIM = 64


@dataclass(frozen=True)
class Shape:
    depth: int = 4
    batch: int = 16
    seq: int = 128


CPU_SHAPE, QUICK_SHAPE, GPU_SHAPE = Shape(), Shape(depth=2), Shape(batch=32, seq=512)


def step_config(width: int, shape: Shape, dtype: str, device: torch.device) -> RunConfig:
    return RunConfig().replace(**{
        "model.width": width, "model.depth": shape.depth, "model.head_dim": HEAD_DIM,
        "param.name": "mup", "param.base_width": 64, "optimizer.name": "adam",
        "train.batch_size": shape.batch, "train.seq_len": shape.seq, "train.dtype": dtype,
        "train.device": device.type,
    }).validate()  # fmt: skip


class TrainStep:
    """One training step of the trainer on a fixed random batch; ``flops`` per call."""

    def __init__(self, width: int, shape: Shape, dtype: str, device: torch.device) -> None:
        s = build(step_config(width, shape, dtype, device))
        self.model = s.model.to(device)
        self.opt = s.optimizer
        self.autocast = dtype == "bfloat16"
        g = torch.Generator().manual_seed(0)
        self.x, self.y = (
            torch.randint(0, 256, (shape.batch, shape.seq), generator=g).to(device)
            for _ in range(2)
        )
        embed = ("tok_embed.weight", "pos_embed.weight")
        n = sum(p.numel() for name, p in self.model.named_parameters() if name not in embed)
        tokens = shape.batch * shape.seq
        self.flops = tokens * (6 * n + 12 * shape.depth * width * shape.seq)

    def __call__(self) -> float:
        loss = loss_fn(self.model, self.x, self.y, self.autocast)
        value = loss.item()  # the trainer reads every loss (divergence check)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return value


TAGS = {"float32": "fp32", "bfloat16": "bf16"}


def bf16_matmul_missing(device: torch.device, n: int = 512) -> str | None:
    """Why bf16 is not measured here (its n x n matmul under a quarter of float32's speed: no
    bf16 kernel, a scalar fallback), else None."""
    timers = (matmul_flops(dt, device, n) for dt in (torch.float32, torch.bfloat16))
    fp32, bf16 = (max(timer() for _ in range(2)) for timer in timers)
    if bf16 >= fp32 / 4:
        return None
    return (
        f"not measured: no bf16 matmul kernel ({bf16 / 1e9:.2g} GFLOP/s bf16 vs "
        f"{fp32 / 1e9:.3g} fp32 at n={n}; cpu capability {torch.backends.cpu.get_cpu_capability()})"
    )


def measure_width(
    width: int,
    shape: Shape,
    device: torch.device,
    rounds: int,
    peak_n: int,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
) -> dict[str, float]:
    """Step seconds, FLOPs, MFU and bf16 speedup at one width. Each round measures, per dtype
    in rotating order, the matmul peak (best of 2) and right after it one step."""
    steps = {dt: TrainStep(width, shape, dt, device) for dt in dtypes}
    peak_fns = {dt: matmul_flops(getattr(torch, dt), device, peak_n) for dt in dtypes}
    for step in steps.values():
        step()  # warm-up: optimizer state, kernels
    peaks: dict[str, list[float]] = {dt: [] for dt in steps}
    times: dict[str, list[float]] = {dt: [] for dt in steps}
    for r in range(rounds):
        for dt in dtypes if r % 2 == 0 else dtypes[::-1]:
            peaks[dt].append(max(peak_fns[dt]() for _ in range(2)))
            times[dt].append(time_call(steps[dt], device))
    flops = steps["float32"].flops
    out: dict[str, float] = {"model_gflop": flops / 1e9}
    for dt in dtypes:
        tag = TAGS[dt]
        out[f"step_ms_{tag}"] = 1e3 * statistics.median(times[dt])
        out[f"mfu_{tag}"] = statistics.median(flops / t / p for t, p in zip(times[dt], peaks[dt]))
        out[f"peak_gflops_{tag}"] = max(peaks[dt]) / 1e9
        out[f"peak_gflops_{tag}_median"] = statistics.median(peaks[dt]) / 1e9
    if "bfloat16" in dtypes:
        out["bf16_speedup"] = median_ratio(times["float32"], times["bfloat16"])
    return out


def line(width: int, out: dict[str, float | str]) -> str:
    """One width's result: step time and MFU of each dtype next to the peak it is relative to."""
    parts = [f"width {width:>5}:"]
    for tag in TAGS.values():
        mfu = out[f"mfu_{tag}_w{width}"]
        if isinstance(mfu, str):
            parts.append(f"{tag} {mfu}")
            continue
        parts.append(
            f"{tag} {out[f'step_ms_{tag}_w{width}']:7.0f} ms  MFU {mfu:.2f} of "
            f"{out[f'peak_gflops_{tag}_w{width}']:6.1f} GFLOP/s  "
        )
    speedup = out[f"bf16_speedup_w{width}"]
    if not isinstance(speedup, str):
        parts.append(f"bf16 speedup {speedup:.2f}x")
    return " ".join(parts)


def run(quick: bool = False, device: str = "auto") -> dict[str, float | str]:
    """Flat results for every width (keys as in the module docstring)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        widths, shape, peak_n = ((512, 1024) if quick else (512, *GPU_WIDTHS)), GPU_SHAPE, 8192
    elif quick:
        widths, shape, peak_n = QUICK_WIDTHS, QUICK_SHAPE, 1024
    else:
        widths, shape, peak_n = WIDTHS, CPU_SHAPE, 2048
    out: dict[str, float | str] = {}
    missing = bf16_matmul_missing(dev)
    dtypes = ("float32",) if missing else ("float32", "bfloat16")
    for width in widths:
        rounds = 2 if quick else (3 if width >= 1024 else 5)
        for key, value in measure_width(width, shape, dev, rounds, peak_n, dtypes).items():
            if key.endswith("_median"):
                out[f"{key.removesuffix('_median')}_w{width}"] = value
            elif key.startswith("peak_"):
                out[key] = max(float(out.get(key, 0.0)), value)
            else:
                out[f"{key}_w{width}"] = value
        if missing:
            for key in ("step_ms_bf16", "mfu_bf16", "bf16_speedup"):
                out[f"{key}_w{width}"] = missing
        print(line(width, out), flush=True)
    return out


if __name__ == "__main__":
    args = bench_args(__doc__)
    run(args.quick, args.device)
