"""Timing on a shared, noisy machine, and a description of the machine.

Contenders are timed in interleaved rounds (every contender once per round, in rotating
order), and comparisons are made round by round: a burst of load from another process slows
the neighbours in one round alike, so the median over rounds of per-round ratios is steadier
than a ratio of separately measured medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Per contender, its seconds in each of ``rounds`` rounds (after ``warmup`` untimed calls)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(time_call(fns[name], device))
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[i] / den[i]."""
    return statistics.median(a / b for a, b in zip(num, den))


def matmul_flops(dtype: torch.dtype, device: torch.device, n: int) -> Callable[[], float]:
    """A timer of one n x n x n matmul: each call returns the FLOP/s it achieved."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    a @ b  # warm-up (library dispatch, memory)

    def measure() -> float:
        return 2 * n**3 / time_call(lambda: a @ b, device)

    return measure


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def machine(device: torch.device) -> dict[str, object]:
    """What the numbers were measured on (CPU model, cores, threads, torch, GPU, load)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info: dict[str, object] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "device": device.type,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    return info


def bench_args(doc: str, device: bool = True) -> argparse.Namespace:
    """The shared command line of a bench script (--quick, --threads, --device); applies
    --threads before anything is timed."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    if device:
        ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
