"""Coordinate check: how per-layer activation size scales with width.

For each layer and step, fit ln rms = c + slope * ln width by least squares across widths. A
width-stable parameterization (muP with its LR scaling) gives slopes near 0 at every step;
SP with a width-independent LR shows positive slopes in the hidden and output layers after a
few steps. microsoft/mup's coord check is the reference presentation of the same data.

`coord_check` runs the check on any model from Python (a factory, a batch, a loss function;
docs/custom-models.md): it measures with `hptransfer.probes.coord` (torch, imported when
called: this module stays torch-free to import) and fits the slopes here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

_REQUIRED = ("layer", "width", "step", "rms")


def coord_slopes(df: pd.DataFrame) -> pd.DataFrame:
    """Log-log slope of activation RMS against width, per (layer, step).

    Input columns: layer, width, step, rms (and optionally seed). Seeds are averaged per
    (layer, width, step) first (arithmetic mean of rms). Non-finite or non-positive rms values
    are skipped. The slope is the closed-form least-squares solution

        slope = sum (x - xbar)(y - ybar) / sum (x - xbar)^2,  x = ln width, y = ln rms.

    Returns columns layer, step, slope (NaN with fewer than 2 widths), n_widths and
    ratio = rms at the largest width / rms at the smallest width, sorted by layer and step.
    """
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise KeyError(f"coord-check frame lacks columns {missing}; expected {list(_REQUIRED)}")
    rms = pd.to_numeric(df["rms"], errors="coerce").astype(float)
    keep = np.isfinite(rms) & (rms > 0)
    mean = (
        df.loc[keep, ["layer", "step", "width"]]
        .assign(rms=rms[keep])
        .groupby(["layer", "step", "width"], sort=True)["rms"]
        .mean()
        .reset_index()
    )
    mean["x"] = np.log(mean["width"].astype(float))
    mean["y"] = np.log(mean["rms"])
    g = mean.groupby(["layer", "step"], sort=True)
    mean["dx"] = mean["x"] - g["x"].transform("mean")
    mean["dy"] = mean["y"] - g["y"].transform("mean")
    mean["sxy"] = mean["dx"] * mean["dy"]
    mean["sxx"] = mean["dx"] ** 2
    g = mean.groupby(["layer", "step"], sort=True)
    out = g.agg(
        sxy=("sxy", "sum"),
        sxx=("sxx", "sum"),
        n_widths=("width", "nunique"),
        rms_small=("rms", "first"),
        rms_large=("rms", "last"),
    ).reset_index()
    out["slope"] = out["sxy"] / out["sxx"]  # 0 / 0 = NaN with a single width
    out["ratio"] = out["rms_large"] / out["rms_small"]
    return out[["layer", "step", "slope", "n_widths", "ratio"]]


@dataclass(frozen=True)
class CoordCheck:
    """The outcome of `coord_check`: ``rms`` (columns layer, width, step, rms, seed) and
    ``slopes`` (layer, step, slope, n_widths, ratio; `coord_slopes`)."""

    rms: pd.DataFrame
    slopes: pd.DataFrame

    def at(self, step: int = -1) -> pd.DataFrame:
        """One row per layer at ``step`` (-1: the last): the RMS at each width, the slope."""
        step = int(self.rms.step.max()) if step < 0 else step
        wide = (
            self.rms[self.rms.step == step]
            .groupby(["layer", "width"], sort=False)["rms"]
            .mean()
            .unstack("width")
        )
        slopes = self.slopes[self.slopes.step == step].set_index("layer")["slope"]
        return wide.assign(slope=slopes.reindex(wide.index)).reset_index()


def coord_check(
    factory: Callable[[int], Any],
    batch: Any,
    loss_fn: Callable[[Any, Any], Any],
    *,
    widths: Sequence[int],
    base_width: int | None = None,
    param: str = "mup",
    optimizer: str = "adam",
    lr_exponents: str = "per_layer",
    lr: float = 1e-3,
    steps: int = 5,
    seeds: Sequence[int] = (0,),
    overrides: Mapping[str, str] | None = None,
    tied: str = "error",
    **parameterize_kw: Any,
) -> CoordCheck:
    """Coordinate check of any model: ``factory(width) -> nn.Module`` at each of ``widths``,
    parameterized with ``param`` (roles against ``base_width``, default the smallest width)
    and trained ``steps`` steps with ``optimizer`` at base LR ``lr``, held constant
    (``lr_exponents="global"``: one LR for every layer and width, the usual control).

    ``batch`` is one batch used at every step, or a function ``step -> batch``;
    ``loss_fn(model, batch)`` returns the scalar loss. ``overrides`` and ``tied`` go to the
    roles (`roles_from_factory`), the remaining keywords to `parameterize` (e.g. ``anchor``).
    A parameterization that transfers gives slopes near 0 for every layer at every step.
    """
    import torch

    from hptransfer.optim import build_optimizer
    from hptransfer.param.apply import parameterize
    from hptransfer.param.roles import roles_from_factory
    from hptransfer.param.rules import make_rule
    from hptransfer.probes.coord import COLUMNS, measure

    base = min(widths) if base_width is None else base_width
    rule = make_rule(param, optimizer, lr_exponents=lr_exponents)
    batch_at = batch if callable(batch) else (lambda step: batch)
    records: list[dict] = []
    for seed in seeds:
        for width in widths:
            torch.manual_seed(seed)
            model = factory(width)
            roles = roles_from_factory(factory, width, base, overrides=overrides, tied=tied)
            gen = torch.Generator().manual_seed(seed)
            par = parameterize(model, roles, rule, lr=lr, generator=gen, **parameterize_kw)
            opt = build_optimizer(optimizer, par.param_groups)
            rows = measure(model, opt, loss_fn, batch_at, steps, width)
            par.remove()
            records += [{**r, "seed": seed} for r in rows]
    rms = pd.DataFrame.from_records(records, columns=COLUMNS)
    return CoordCheck(rms, coord_slopes(rms))
