"""Overhead of the parameterization: a muP nanodo (multiplier form: forward hooks, per-role
param groups) against the same model in plain PyTorch (same weights, one AdamW group).

Both train steps are timed side by side in this process, interleaved, and the ratio of
medians is reported (this machine is noisy; absolute times are not comparable across runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hptransfer.config import RunConfig
from hptransfer.models import build_model
from hptransfer.train import build


def _step_fn(model, opt, x, y):
    def step():
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(width: int, repeats: int, batch: int = 16, seq: int = 128, depth: int = 4) -> dict:
    cfg = RunConfig().replace(**{
        "model.width": width, "model.depth": depth, "model.head_dim": 32,
        "param.name": "mup", "param.base_width": 64, "optimizer.name": "adamw",
        "train.seq_len": seq, "train.batch_size": batch})
    s = build(cfg.validate())
    # same weights (so the same numerics), but no hooks and one param group
    plain = build_model("nanodo", width=width, depth=depth, seq_len=seq, head_dim=32)
    plain.load_state_dict(s.model.state_dict())
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=0.0, foreach=True)
    x = torch.randint(0, 256, (batch, seq))
    y = torch.randint(0, 256, (batch, seq))
    steps = {"param": _step_fn(s.model, s.optimizer, x, y),
             "plain": _step_fn(plain, plain_opt, x, y)}
    for f in steps.values():  # warm up
        f(), f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(repeats):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        for k in order:
            t0 = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"width": width, "param_s": med["param"], "plain_s": med["plain"],
            "ratio": med["param"] / med["plain"]}


def run(quick: bool = False) -> dict:
    results = {}
    for width in (128, 256):
        r = measure(width, repeats=6 if quick else 20)
        results[f"param_overhead_ratio_w{width}"] = r["ratio"]
        print(f"width {width:>4}: parameterized {r['param_s'] * 1e3:7.1f} ms  "
              f"plain {r['plain_s'] * 1e3:7.1f} ms  ratio {r['ratio']:.3f}  (target <= 1.03)")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    run(ap.parse_args().quick)
