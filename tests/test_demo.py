"""The demo: its spec (kept equal to recipes/demo.toml) and its report, on synthetic results."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import tomllib

from hptransfer.demo import DEMO_SPEC, report
from hptransfer.sweep import parse_spec

RECIPE = Path(__file__).parents[1] / "recipes" / "demo.toml"


def test_demo_spec_matches_the_recipe_and_is_a_valid_quickstart() -> None:
    assert RECIPE.read_text() == DEMO_SPEC
    spec = parse_spec(tomllib.loads(DEMO_SPEC))
    widths = spec.grid["model.width"]
    assert len(widths) >= 3 and max(widths) / min(widths) >= 8
    assert [c["param.name"] for c in spec.cases] == ["sp", "mup"]
    assert spec.cases[0]["param.lr_exponents"] == "global" and spec.base.optimizer.name == "adam"
    assert spec.settings.adaptive and spec.settings.workers == 2


def test_report_prints_optima_and_shifts_in_grid_steps() -> None:
    rows = []
    optimum = {("mup", 16): 2**-6, ("mup", 128): 2**-6.5, ("sp", 16): 2**-6, ("sp", 128): 2**-8}
    for (name, width), best in optimum.items():
        for k in range(-6, 7):
            lr = best * 2 ** (k / 2)
            rows.append({"run_id": f"{name}{width}{k}", "status": "ok", "parameterization": name,
                         "optimizer": "adam", "width": width, "lr": lr,
                         "final_eval_loss": 2.5 + 0.01 * k * k})  # fmt: skip
    stream = io.StringIO()
    shifts = report(pd.DataFrame(rows), stream)
    assert shifts == pytest.approx({"mup": 1.0, "sp": 4.0})
    text = stream.getvalue()
    assert "sp: optimal LR per width" in text and "moves by 4.0 grid step(s)" in text
