"""The demo: its spec (kept equal to recipes/demo.toml) and its report, on synthetic results."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from hptransfer.demo import DEMO_SPEC, report, run_demo
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


def test_demo_runs_its_sweep_prints_optima_and_writes_the_report(tmp_path, monkeypatch) -> None:
    """The whole demo path, with the sweep tests' fast stand-in for train (optimum 2^-7)."""
    monkeypatch.setenv("HPTRANSFER_TRAIN_FN", "test_sweep_fakes:fake_train")
    monkeypatch.setenv("FAKE_TRAIN_S", "0.01")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    stream = io.StringIO()
    shifts = run_demo(tmp_path / "demo", quiet=True, stream=stream)
    assert shifts == {"mup": 0.0, "sp": 0.0}  # the fake's optimum does not depend on width
    text = stream.getvalue()
    assert "mup: optimal LR per width" in text and "0.0078" in text  # 2^-7
    assert (tmp_path / "demo" / "report.html").exists() and "report.html" in text
