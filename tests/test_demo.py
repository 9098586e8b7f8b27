"""The demo: its spec (the packaged recipes/demo.toml) and its report, on synthetic results."""

from __future__ import annotations

import hashlib
import io
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from hptransfer.experiments.demo import RECIPE, report, run_demo
from hptransfer.sweep import parse_spec

GRID_RUN_IDS = (24, "80322e9228ad9b33")
"""Count and sha256 prefix of the sorted run ids of the demo's starting grid, as the demo ran
them when its spec was a copy in demo.py (commit 0ec7111): the packaged recipe keeps them."""


def test_demo_spec_is_the_packaged_recipe_and_a_valid_quickstart() -> None:
    assert RECIPE.parent.name == "recipes" and RECIPE.parent.parent.name == "hptransfer"
    spec = parse_spec(tomllib.loads(RECIPE.read_text()))
    ids = sorted(r.run_id for r in spec.expand())
    assert (len(ids), hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16]) == GRID_RUN_IDS
    widths = spec.grid["model.width"]
    assert len(widths) >= 3 and max(widths) / min(widths) >= 8
    assert [c["param.name"] for c in spec.cases] == ["sp", "mup"]
    assert spec.cases[0]["param.lr_exponents"] == "global" and spec.base.optimizer.name == "adam"
    assert spec.settings.adaptive and spec.settings.workers == 2


OPTIMUM = {("mup", 16): 2**-6, ("mup", 128): 2**-6.5, ("sp", 16): 2**-6, ("sp", 128): 2**-8}
"""Synthetic optima: muP moves half a grid step over 3 doublings, SP two octaves."""


def synthetic_runs(optimum: dict = OPTIMUM) -> pd.DataFrame:
    """A noise-free quadratic in log2 LR around each optimum, 13 LRs at half-octave spacing."""
    rows = []
    for (name, width), best in optimum.items():
        for k in range(-6, 7):
            lr = best * 2 ** (k / 2)
            rows.append({"run_id": f"{name}{width}{k}", "status": "ok", "parameterization": name,
                         "optimizer": "adam", "width": width, "lr": lr,
                         "final_eval_loss": 2.5 + 0.01 * k * k})  # fmt: skip
    return pd.DataFrame(rows)


def test_report_prints_optima_and_shifts_in_grid_steps() -> None:
    stream = io.StringIO()
    shifts = report(synthetic_runs(), stream)
    assert shifts == pytest.approx({"mup": 1.0, "sp": 4.0})
    text = stream.getvalue()
    assert "sp: optimal LR per width" in text and "moves by 4.0 grid step(s)" in text
    # the verdict: mup's optimum moves half a step over 3 doublings, sp's 2 octaves
    assert "verdict: transfers (optimal LR x0.89 per doubling of width" in text
    assert "verdict: drifts (optimal LR x0.63 per doubling of width" in text


def test_report_ends_with_the_lr_to_use_at_width_2048() -> None:
    stream = io.StringIO()
    report(synthetic_runs(), stream)
    text = stream.getvalue()
    answer = text[text.index("what to use at width 2048") :]
    assert text.index("verdict: drifts") < text.index("what to use at width 2048")
    # eta*(N) = C N^-beta through both widths, 4 more doublings: muP 2^(-6 - 7/6), SP 2^(-6 - 14/3)
    mup = f"mup: base LR {2 ** (-6 - 7 / 6):.4g} (90% interval"
    sp = f"sp: base LR {2 ** (-6 - 14 / 3):.4g} (90% interval"
    assert mup in answer and sp in answer and "extrapolate, drift x0.63 per doubling" in answer
    assert "warning: sp: far extrapolation: width 2048 is 16x" in answer
    assert "recommended: mup: no loss law (needs three widths)" in answer


def test_report_says_why_there_is_no_answer() -> None:
    stream = io.StringIO()
    report(synthetic_runs({("mup", 16): 2**-6, ("sp", 16): 2**-6}), stream)
    assert "what to use at width 2048" in stream.getvalue()
    assert "no prediction: optima at one width only ([16])" in stream.getvalue()


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
    assert "mup: base LR 0.00781" in text and "; keep, drift x1.00 per doubling" in text
