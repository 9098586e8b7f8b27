"""How the trainer's step time grows with width: its fitted exponent against the FLOP count's.

Step time t(D) and model FLOPs F(D) of bench_mfu's float32 step are fitted as power laws in the
width D (least squares in log-log). The widths are measured minutes apart, so on a shared
machine the raw times also carry the load's drift; ``time_exponent`` therefore fits the time in
units of the matmul peak measured in the same rounds (F / MFU, i.e. t x peak), and
``raw_time_exponent`` the seconds themselves. A time exponent near ``flops_exponent`` means the
step scales like its arithmetic; a smaller one, that a fixed cost (Python, kernel launches,
memory-bound elementwise work) matters at the small widths; a larger one, that efficiency drops
as the matrices grow. ``local_*`` exponents are taken between consecutive widths.

Usage: ``python benchmarks/bench_width_scaling.py [--quick] [--threads N]``. ``run_all.py``
passes bench_mfu's step times to :func:`fit` instead of measuring them again.
"""

from __future__ import annotations

import math

import bench_mfu
from timing import bench_args


def exponent(widths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(width)."""
    xs = [math.log(w) for w in widths]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def fit(mfu_results: dict[str, float]) -> dict[str, float]:
    """Exponents from bench_mfu's flat results (``step_ms_fp32_w<D>``, ``model_gflop_w<D>``,
    ``mfu_fp32_w<D>``)."""
    widths = sorted(int(k.rsplit("_w", 1)[1]) for k in mfu_results if k.startswith("step_ms_fp32"))
    if len(widths) < 2:
        raise ValueError("width scaling needs step times at two or more widths")
    raw = [mfu_results[f"step_ms_fp32_w{w}"] for w in widths]
    flops = [mfu_results[f"model_gflop_w{w}"] for w in widths]
    times = [f / mfu_results[f"mfu_fp32_w{w}"] for f, w in zip(flops, widths)]  # t x peak
    out = {
        "time_exponent": exponent(widths, times),
        "raw_time_exponent": exponent(widths, raw),
        "flops_exponent": exponent(widths, flops),
    }
    for i in range(1, len(widths)):
        pair, tag = widths[i - 1 : i + 1], f"w{widths[i - 1]}_{widths[i]}"
        out[f"local_time_exponent_{tag}"] = exponent(pair, times[i - 1 : i + 1])
        out[f"local_flops_exponent_{tag}"] = exponent(pair, flops[i - 1 : i + 1])
    return out


def run(quick: bool = False, device: str = "auto") -> dict[str, float]:
    out = fit(bench_mfu.run(quick, device))
    print(
        f"step time ~ width^{out['time_exponent']:.2f}, "
        f"model FLOPs ~ width^{out['flops_exponent']:.2f}"
    )
    return out


if __name__ == "__main__":
    args = bench_args(__doc__)
    run(args.quick, args.device)
