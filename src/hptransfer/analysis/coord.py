"""Coordinate check: how per-layer activation size scales with width.

For each layer and step, fit ln rms = c + slope * ln width by least squares across widths. A
width-stable parameterization (muP with its LR scaling) gives slopes near 0 at every step;
SP with a width-independent LR shows positive slopes in the hidden and output layers after a
few steps. microsoft/mup's coord check is the reference presentation of the same data.
"""

from __future__ import annotations

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
