"""Optimizer-step cost relative to torch.optim.AdamW(foreach=True), and in-house vs reference.

Parameter set: a depth-4 decoder at width D (128 and 512): embedding 256xD, per block four DxD
attention matrices, Dx4D and 4DxD MLP matrices and two LayerNorms (weight and bias vectors),
a final LayerNorm and a Dx256 head; float32, fixed random gradients.

Every contender gets its own copy of the parameters and ``BLOCK`` warm-up steps (state
allocation; Shampoo computes roots on each of its first ``precondition_frequency`` = 10 steps).
Repeats are interleaved (each repeat times one block of ``BLOCK`` consecutive steps of every
contender, in rotating order) and the median block time is used, so Shampoo's root
recomputation (every 10 steps) is amortized. Ratios: ``<name>`` = step time / AdamW's,
``<name>_vs_ref`` = in-house / reference implementation. A contender whose parameters are not
finite afterwards is reported as a numerical failure.

Usage: ``python benchmarks/bench_optimizers.py [--quick] [--threads N]``; ``run(quick)``
returns the ratios as a flat dict keyed ``w<D>/<name>``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from adam_atan2_pytorch import AdamAtan2 as RefAdamAtan2
from pytorch_optimizer import ADOPT as RefADOPT
from pytorch_optimizer import Lamb as RefLamb
from timing import interleaved, median_ratio

from hptransfer.optim import OPTIMIZERS, build_optimizer

BLOCK = 10
CPU = torch.device("cpu")
VOCAB = 256
DEPTH = 4


def decoder_groups(width: int) -> list[dict]:
    """Param groups (with roles) for the benchmark decoder; gradients are filled in."""
    g = torch.Generator().manual_seed(0)

    def param(*shape: int) -> torch.Tensor:
        p = torch.randn(*shape, generator=g) / shape[-1] ** 0.5
        p.grad = torch.randn(*shape, generator=g) * 1e-2
        return p

    d = width
    hidden = [param(d, d) for _ in range(4 * DEPTH)]
    hidden += [param(4 * d, d) for _ in range(DEPTH)] + [param(d, 4 * d) for _ in range(DEPTH)]
    vectors = [param(d) for _ in range(4 * DEPTH + 2)]
    return [
        {"params": [param(VOCAB, d)], "lr": 1e-3, "role": "input", "name": "emb"},
        {"params": hidden, "lr": 1e-3, "role": "hidden", "name": "hidden"},
        {"params": [param(VOCAB, d)], "lr": 1e-3, "role": "output", "name": "head"},
        {"params": vectors, "lr": 1e-3, "role": "vector", "name": "vectors"},
    ]


def _plain(groups: list[dict]) -> list[dict]:
    return [{"params": gr["params"], "lr": gr["lr"]} for gr in groups]


Factory = Callable[[list[dict]], torch.optim.Optimizer]

REFERENCES: dict[str, Factory] = {
    "adam_atan2_ref": lambda gs: RefAdamAtan2(_plain(gs), lr=1e-3, betas=(0.9, 0.95)),
    "adopt_ref": lambda gs: RefADOPT(_plain(gs), clip_lambda=lambda s: (s - 1) ** 0.25),
    "lamb_ref": lambda gs: RefLamb(_plain(gs), weight_decouple=False, adam_debias=True),
}
# in-house configurations matching the references above
MATCHED: dict[str, Factory] = {
    "adam_atan2": lambda gs: build_optimizer("adam_atan2", gs),
    "adopt": lambda gs: build_optimizer("adopt", gs),
    "lamb": lambda gs: build_optimizer("lamb", gs, bias_correction=False),
}


def contenders() -> dict[str, Factory]:
    out: dict[str, Factory] = {
        "adamw_torch": lambda gs: torch.optim.AdamW(_plain(gs), lr=1e-3, foreach=True)
    }
    for name in OPTIMIZERS:
        out[name] = MATCHED.get(name, lambda gs, n=name: build_optimizer(n, gs))
    out.update(REFERENCES)
    return out


def block_times(width: int, repeats: int, skip: tuple[str, ...] = ()) -> dict[str, list[float]]:
    """Seconds per step of every contender at ``width``, one value per repeat (round); raises
    if a contender's parameters become non-finite."""
    opts = {
        name: make(decoder_groups(width)) for name, make in contenders().items() if name not in skip
    }

    def block(opt: torch.optim.Optimizer) -> Callable[[], None]:
        def steps() -> None:
            for _ in range(BLOCK):
                opt.step()

        return steps

    # one warm-up block each: state allocation and Shampoo's first roots
    secs = interleaved({name: block(opt) for name, opt in opts.items()}, repeats, CPU)
    failed = [
        name
        for name, opt in opts.items()
        if not all(torch.isfinite(p).all() for g in opt.param_groups for p in g["params"])
    ]
    if failed:
        raise FloatingPointError(f"width {width}: non-finite parameters after {failed}")
    return {name: [t / BLOCK for t in ts] for name, ts in secs.items()}


def _ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of the per-round ratio: a burst of load from another process slows
    both contenders of one round alike."""
    return median_ratio(times[name], times[base])


def run(quick: bool = False) -> dict[str, float]:
    """Ratios per width: ``w<D>/<name>`` (vs AdamW) and ``w<D>/<name>_vs_ref``."""
    ratios: dict[str, float] = {}
    for width in (128, 512):
        repeats = (3 if quick else 7) if width == 512 else (5 if quick else 15)
        times = block_times(width, repeats)
        for name in OPTIMIZERS:
            ratios[f"w{width}/{name}"] = _ratio(times, name, "adamw_torch")
        for name in MATCHED:
            ratios[f"w{width}/{name}_vs_ref"] = _ratio(times, name, f"{name}_ref")
        ratios[f"w{width}/adamw_torch_ms"] = 1e3 * statistics.median(times["adamw_torch"])
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ratios = run(args.quick)
    widths = sorted({k.split("/")[0] for k in ratios})
    rows = sorted({k.split("/")[1] for k in ratios})
    print(f"{'ratio':<22}" + "".join(f"{w:>10}" for w in widths))
    for row in rows:
        print(f"{row:<22}" + "".join(f"{ratios[f'{w}/{row}']:>10.2f}" for w in widths))


if __name__ == "__main__":
    main()
