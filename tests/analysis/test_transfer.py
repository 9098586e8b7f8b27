"""analysis.transfer: the one transfer verdict, and the demo, the report and the reproductions
printing the same optima and drift for the same directory."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hptransfer.analysis.transfer import (
    MAX_DRIFT,
    finished_runs,
    records,
    setting_rows,
    transfer_verdict,
)

WIDTHS = (32, 64, 128)
BETA = {"mup": 0.0, "sp": 0.5}  # eta*(N) = 2^-5 (N/32)^-beta


def _loss(width: int, j: int, j_best: int) -> float:
    """Steep above the optimum, shallow below (j: grid index in half octaves)."""
    u = j - j_best
    return 2.5 - 0.1 * math.log2(width) + (0.01 * u * u if u < 0 else 0.3 * u * u)


def _write_run(root: Path, run_id: str, config: dict, summary: dict) -> None:
    run = root / "runs" / run_id
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    (run / "summary.json").write_text(json.dumps({"run_id": run_id, **summary}))


def write_lopsided_sweep(root: Path) -> Path:
    """mup (optimum flat) and sp (optimum x2^-0.5 per doubling) on a half-octave grid, with a
    loss curve a wide fit window gets wrong; only sp's configs set param.lr_exponents."""
    for param, beta in BETA.items():
        for width in WIDTHS:
            j_best = -10 - round(2 * beta * math.log2(width / 32))
            for j in range(j_best - 6, j_best + 4):
                lr = 2.0 ** (j / 2)
                config = {"model": {"width": width}, "optimizer": {"name": "adam", "lr": lr},
                          "param": {"name": param}, "seed": 0}  # fmt: skip
                if param == "sp":
                    config["param"]["lr_exponents"] = "global"
                summary = {"status": "ok", "final_eval_loss": _loss(width, j, j_best), "steps": 1}
                _write_run(root, f"{param}-{width}-{j}", config, summary)
    return root


def test_setting_rows_match_nan_with_nan() -> None:
    frame = pd.DataFrame({"a": ["x", "x", "y"], "b": [1.0, np.nan, np.nan]})
    assert setting_rows(frame, {"a": "x", "b": np.nan}).index.tolist() == [1]
    assert setting_rows(frame, {"a": "x", "b": None}).index.tolist() == [1]
    assert setting_rows(frame, {"b": 1.0}).index.tolist() == [0]


def test_verdicts_on_a_known_drift(tmp_path: Path) -> None:
    from hptransfer.store import load_runs

    runs = finished_runs(load_runs(write_lopsided_sweep(tmp_path)))
    transfer = transfer_verdict(runs, ["parameterization"])
    verdicts = {v["parameterization"]: v for v in records(transfer.verdicts)}
    assert verdicts["mup"]["verdict"] == "transfers"
    assert verdicts["mup"]["drift_factor_per_doubling"] == pytest.approx(1.0, abs=0.05)
    assert verdicts["sp"]["verdict"] == "drifts" and 0.5 > MAX_DRIFT
    assert verdicts["sp"]["drift_factor_per_doubling"] == pytest.approx(2**-0.5, rel=0.05)
    assert (verdicts["sp"]["width_min"], verdicts["sp"]["width_max"]) == (32, 128)
    assert transfer.fits["verdict"].tolist() == transfer.verdicts["verdict"].tolist()
    lone = transfer_verdict(runs[runs["width"] == 32], ["parameterization"]).verdicts
    assert set(lone["verdict"]) == {"unclear"}
    assert set(lone["note"]) == {"needs optima at two or more widths"}


def test_demo_report_and_repro_print_the_same_optima_and_drift(tmp_path: Path) -> None:
    from hptransfer.experiments import demo
    from hptransfer.experiments.repro import Reproduction, analyse, load_results
    from hptransfer.experiments.repro.transfer import analyse_transfer
    from hptransfer.report import build_report
    from hptransfer.store import load_runs

    root = write_lopsided_sweep(tmp_path / "sweep")
    _, summary_path = build_report(root)
    report = {h["parameterization"]: h for h in json.loads(summary_path.read_text())["headline"]}
    optima = pd.DataFrame(json.loads(summary_path.read_text())["optima"])

    text = io.StringIO()
    demo.report(load_runs(root), text)
    factors = re.findall(r"verdict: \w+ \(optimal LR x([0-9.]+) per doubling", text.getvalue())

    repro = Reproduction(
        name="lopsided", paper="-", claim="-", specs=(), analyse=analyse_transfer,
        by=("parameterization", "param.lr_exponents"), label=lambda k: k["parameterization"],
    )  # fmt: skip
    numbers = analyse(repro, load_results(repro, root), root)
    by_name = {s["setting"]: s for s in numbers["settings"]}
    assert set(by_name) == set(report) == {"mup", "sp"}  # mup's lr_exponents is unset (NaN)

    for i, name in enumerate(sorted(report)):
        head, rec = report[name], by_name[name]
        assert rec["width"] == list(WIDTHS)
        assert 2.0 ** rec["log2_lr_opt"][0] == pytest.approx(head["lr_at_width_min"], rel=1e-3)
        assert 2.0 ** rec["log2_lr_opt"][-1] == pytest.approx(head["lr_at_width_max"], rel=1e-3)
        assert 2.0 ** rec["drift_per_doubling"] == pytest.approx(
            head["drift_factor_per_doubling"], rel=1e-3
        )
        assert rec["transfer_penalty_pct"] == pytest.approx(head["transfer_penalty_pct"], abs=1e-3)
        assert float(factors[i]) == pytest.approx(head["drift_factor_per_doubling"], abs=0.006)
        grid = optima[optima["parameterization"] == name].sort_values("width")["lr_grid"]
        for lr in grid:
            assert f"{lr:<12.4g}" in text.getvalue()
