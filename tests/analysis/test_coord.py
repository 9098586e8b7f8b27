"""coord_slopes on activation sizes with known power laws in width."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hptransfer.analysis import coord_slopes


def _coord_frame(exponents: dict[str, float], seeds: int = 1) -> pd.DataFrame:
    """rms = c * width^s per layer, s growing with the step (step 0: flat), seed noise that
    averages out exactly (factors 0.9 and 1.1 on the two seeds)."""
    rows = []
    for layer, s in exponents.items():
        for width in (64, 128, 256, 512):
            for step in range(3):
                for seed in range(seeds):
                    factor = 1.0 if seeds == 1 else (0.9, 1.1)[seed]
                    rms = factor * 0.5 * width ** (s * step)
                    rows.append(
                        {"layer": layer, "width": width, "step": step, "rms": rms, "seed": seed}
                    )
    return pd.DataFrame(rows)


def test_slopes_recover_exponents_per_layer_and_step() -> None:
    out = coord_slopes(_coord_frame({"embed": 0.0, "hidden.0": 0.5, "head": 1.0}))
    assert list(out.columns) == ["layer", "step", "slope", "n_widths", "ratio"]
    assert len(out) == 9
    got = out.set_index(["layer", "step"])["slope"]
    assert got[("head", 2)] == pytest.approx(2.0)
    assert got[("hidden.0", 1)] == pytest.approx(0.5)
    assert got[("embed", 2)] == pytest.approx(0.0, abs=1e-12)
    assert out.set_index(["layer", "step"]).loc[("head", 1), "ratio"] == pytest.approx(8.0)


def test_seeds_are_averaged_before_the_fit() -> None:
    # arithmetic mean over seeds: (0.9 + 1.1) / 2 = 1, so the slopes match the one-seed case
    got = coord_slopes(_coord_frame({"head": 0.25}, seeds=2))
    assert got["slope"].tolist() == pytest.approx([0.0, 0.25, 0.5])


def test_bad_values_skipped_and_single_width_is_nan() -> None:
    df = _coord_frame({"head": 1.0})
    df.loc[(df["width"] == 512) & (df["step"] == 1), "rms"] = np.nan
    df.loc[(df["width"] == 256) & (df["step"] == 1), "rms"] = 0.0
    out = coord_slopes(df).set_index("step")
    assert out.loc[1, "slope"] == pytest.approx(1.0)
    assert out.loc[1, "n_widths"] == 2
    one = coord_slopes(df[df["width"] == 64])
    assert one["slope"].isna().all()


def test_missing_column_is_named() -> None:
    with pytest.raises(KeyError, match="rms"):
        coord_slopes(pd.DataFrame({"layer": ["a"], "width": [8], "step": [0]}))
