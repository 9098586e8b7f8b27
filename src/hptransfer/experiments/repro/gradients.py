"""Gradient RMS per role against width: where Adam's eps starts to dominate (e_epsilon).

Adam divides each coordinate's first moment by ``sqrt(v_hat) + eps``; ``sqrt(v_hat)`` is the
coordinate's gradient RMS over recent steps. Once a layer's gradients are as small as eps,
eps dominates the denominator and the step stops being scale invariant (parameterizations.md
section 5). :func:`gradient_rms` trains the run a config describes (built as ``train`` builds
it, with its LR schedule and clipping, on its train.device) at each width and seed and
records, every ``every`` steps, each parameter's gradient RMS over its coordinates,
sqrt(mean(g^2)), before the update.

:func:`gradient_fits`: per role and seed, the RMS at a width is the size-weighted RMS over the
role's parameters and over the recorded steps of the second half of training; a least-squares
line

    log2 rms = a + s log2 n      gives the width where rms = eps:  n* = 2^((log2 eps - a) / s)

fitted on the seed-mean log2 rms (the point) and on each seed alone (the interval [min, max]);
None where s >= 0 (the RMS does not fall with width: no crossing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hptransfer.experiments.repro.reproduction import Record

if TYPE_CHECKING:
    import pandas as pd

    from hptransfer.assemble import Setup
    from hptransfer.config import RunConfig

COLUMNS = ["name", "role", "numel", "width", "seed", "step", "rms"]


Recorder = Callable[[list, "Setup"], list[dict]]
"""(the trainable (name, parameter) pairs, the run's Setup) -> one record per parameter, taken
after the backward pass and before the update."""


def probe_training(
    cfg: RunConfig, widths: Sequence[int], seeds: Sequence[int], at: Callable[[int], bool],
    record: Recorder,
) -> list[dict]:  # fmt: skip
    """Train ``cfg``'s run at each width and seed (``cfg.train.steps`` steps with the run's LR
    schedule and gradient clipping, built as ``train`` builds it, on its train.device) and call
    ``record`` at every step where ``at(step)`` holds, after the backward pass and before
    clipping and the update; each record gets its width, seed and step."""
    import torch

    from hptransfer.assemble import builds
    from hptransfer.train import lr_schedule

    records: list[dict] = []
    for run_cfg, s in builds(cfg, widths, seeds):
        width, seed = run_cfg.model.width, run_cfg.seed
        device = torch.device(run_cfg.train.device)
        s.model.to(device)  # in place, as train's distributed.prepare: the optimizer follows
        named = [(n, p) for n, p in s.model.named_parameters() if p.requires_grad]
        sched = torch.optim.lr_scheduler.LambdaLR(s.optimizer, lr_schedule(run_cfg))
        for step in range(run_cfg.train.steps):
            x, y = (t.to(device) for t in s.batches.get(step))
            s.optimizer.zero_grad(set_to_none=True)
            s.loss(s.model, x, y).backward()
            if at(step):
                with torch.no_grad():
                    records += [{**r, "width": width, "seed": seed, "step": step}
                                for r in record(named, s)]  # fmt: skip
            if run_cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(s.model.parameters(), run_cfg.train.grad_clip)
            s.optimizer.step()
            sched.step()
    return records


def gradient_rms(
    cfg: RunConfig, widths: Sequence[int], seeds: Sequence[int], every: int = 10
) -> pd.DataFrame:
    """Gradient RMS of every trainable parameter of ``cfg``'s run at each width and seed, at
    steps 0, every, 2 every, ... (:func:`probe_training`; the RMS is taken before clipping).

    Returns a tidy frame with columns name, role (the RoleTable's), numel, width, seed, step,
    rms.
    """
    import pandas as pd

    def rms(named: list, s: Setup) -> list[dict]:
        return [{"name": name, "role": s.roles[name].role, "numel": math.prod(p.shape),
                 "rms": p.grad.float().pow(2).mean().sqrt().item()}
                for name, p in named if p.grad is not None]  # fmt: skip

    records = probe_training(cfg, widths, seeds, lambda step: step % every == 0, rms)
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def role_rms(grads: pd.DataFrame) -> pd.DataFrame:
    """Per role, width and seed: the gradient RMS over the role's coordinates (size-weighted)
    and over the recorded steps of the second half of training (columns role, width, seed,
    rms)."""
    last = grads[grads["step"] >= grads["step"].max() / 2]
    sq = (last["rms"] ** 2 * last["numel"]).groupby([last["role"], last["width"], last["seed"]])
    size = last["numel"].groupby([last["role"], last["width"], last["seed"]])
    return (sq.sum() / size.sum()).pow(0.5).rename("rms").reset_index()


def _crossing(widths: Sequence[float], rms: Sequence[float], eps: float) -> tuple[float, float]:
    """(slope, width where the fitted line reaches eps; inf when the slope is >= 0)."""
    import numpy as np

    slope, intercept = np.polyfit(np.log2(widths), np.log2(rms), 1)
    if slope >= 0:
        return float(slope), math.inf
    return float(slope), float(2 ** ((math.log2(eps) - intercept) / slope))


def gradient_fits(grads: pd.DataFrame, eps_values: Sequence[float]) -> list[Record]:
    """Per role: the gradient RMS per width (geometric mean over seeds), the log-log slope
    against width and the width where the RMS reaches each eps, each with its seed interval
    (``*_lo``, ``*_hi``: min and max over the per-seed fits; None with one seed, and for a
    bound that is no crossing)."""
    import numpy as np

    table = role_rms(grads)
    out = []
    for role, rows in table.groupby("role"):
        wide = rows.pivot(index="width", columns="seed", values="rms").sort_index()
        widths = [float(w) for w in wide.index]
        mean = 2 ** np.log2(wide).mean(axis=1)
        rec: Record = {"role": role, "width": [int(w) for w in widths],
                       "rms": [float(f"{v:.4g}") for v in mean]}  # fmt: skip
        seeds = [wide[c].to_numpy() for c in wide.columns] if wide.shape[1] > 1 else []
        for j, eps in enumerate(eps_values):
            slope, cross = _crossing(widths, mean, eps)
            per_seed = [_crossing(widths, r, eps) for r in seeds]
            if j == 0:
                rec["slope"] = round(slope, 3)
                rec["slope_lo"] = round(min(p[0] for p in per_seed), 3) if seeds else None
                rec["slope_hi"] = round(max(p[0] for p in per_seed), 3) if seeds else None
            ends = [p[1] for p in per_seed]
            rec[f"width_at_{eps:g}"] = _finite(cross)
            rec[f"width_at_{eps:g}_lo"] = _finite(min(ends)) if ends else None
            rec[f"width_at_{eps:g}_hi"] = _finite(max(ends)) if ends else None
        out.append(rec)
    return out


def _finite(value: float) -> float | None:
    return float(f"{value:.3g}") if math.isfinite(value) else None


def _width(rec: Record, key: str) -> str:
    """A crossing width with its seed interval, ``1.2e+05 [8e+04, 2e+05]``."""

    def one(v: float | None) -> str:
        return "none" if v is None else f"{v:.2g}"

    lo, hi = rec.get(f"{key}_lo"), rec.get(f"{key}_hi")
    if lo is None and hi is None:
        return one(rec[key])
    return f"{one(rec[key])} [{one(lo)}, {one(hi)}]"


def gradient_lines(fits: list[Record], eps_values: Sequence[float], probe_eps: float
                   ) -> list[str]:  # fmt: skip
    """The probe's fits as a Markdown table (``probe_eps``: the eps the probe trained with)."""
    from hptransfer.experiments.repro.transfer import spread

    widths = ", ".join(map(str, fits[0]["width"])) if fits else ""
    head = " | ".join(f"width where RMS = {eps:.3g}" for eps in eps_values)
    lines = [f"| role | gradient RMS at {widths} (eps {probe_eps:g}) | slope vs width | {head} |",
             "|---|---|---|" + "---|" * len(eps_values)]  # fmt: skip
    for f in fits:
        cells = " | ".join(_width(f, f"width_at_{eps:g}") for eps in eps_values)
        rms = ", ".join(f"{v:.2e}" for v in f["rms"])
        lines.append(f"| {f['role']} | {rms} | {spread(f, 'slope')} | {cells} |")
    lines.append("(seed-mean fit [min, max over per-seed fits]; none: the RMS does not fall "
                 "with width; widths beyond the last measured one are extrapolated)")  # fmt: skip
    return lines


def gradient_figure(grads: pd.DataFrame, fits: list[Record], eps_values: Sequence[float],
                    path: Path) -> str:  # fmt: skip
    """NAME-gradients.png: each role's gradient RMS against width (per seed), its fitted line
    extended to the largest crossing width, and the eps values."""
    import matplotlib.pyplot as plt
    import numpy as np

    from hptransfer.experiments.repro.transfer import save

    table = role_rms(grads)
    ends = [f[f"width_at_{e:g}"] for f in fits for e in eps_values]
    top = max([v for v in ends if v is not None] + [float(table["width"].max())])
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for i, f in enumerate(fits):
        rows = table[table["role"] == f["role"]]
        ax.plot(rows["width"], rows["rms"], "o", ms=3, color=f"C{i}", alpha=0.6)
        n = np.geomspace(min(f["width"]), top, 50)
        slope, intercept = np.polyfit(np.log2(f["width"]), np.log2(f["rms"]), 1)
        ax.plot(n, 2 ** (intercept + slope * np.log2(n)), "-", lw=1, color=f"C{i}",
                label=f"{f['role']}: slope {f['slope']:+.2f}")  # fmt: skip
    for eps in eps_values:
        ax.axhline(eps, ls=":", color="k", lw=0.8)
        ax.text(min(table["width"]), eps * 1.3, f"eps {eps:.3g}", fontsize="x-small")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel("gradient RMS (second half of training)")
    ax.set_title("gradient RMS per role; lines: fits extrapolated", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    return save(fig, path)
