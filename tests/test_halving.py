"""Successive halving (sweep/halving.py): the rule on synthetic curves, and in a sweep."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from hptransfer import store
from hptransfer.config import ConfigError
from hptransfer.sweep import parse_spec, run_sweep
from hptransfer.sweep.halving import Halving, stop_step
from hptransfer.sweep.ls import status_text

TESTS = Path(__file__).parent


def test_rungs_sit_on_eval_steps_before_the_end() -> None:
    rule = Halving()
    assert rule.rung_steps(90, 10) == [10, 30]
    assert rule.rung_steps(100, 10) == [20, 40]  # the first eval at or after 100/9, 100/3
    assert rule.rung_steps(100, 100) == []  # evaluated only at its end: never stopped
    assert Halving(eta=2, rungs=3).rung_steps(80, 5) == [10, 20, 40]


def _replay(rule: Halving, rungs: list[int], curves: list[dict[int, float]]) -> list[int | None]:
    """stop_step for each curve in order, each compared with the earlier ones as they ended."""
    before: list[dict[int, float]] = []
    out = []
    for curve in curves:
        at = stop_step(rule, rungs, curve, before)
        out.append(at)
        before.append(curve if at is None else {s: v for s, v in curve.items() if s <= at})
    return out


def _curve(final: float, early: float, steps: int = 90) -> dict[int, float]:
    """Eval losses every 10 steps, from ``early`` at step 10 linearly to ``final``."""
    return {s: early + (final - early) * (s - 10) / (steps - 10) for s in range(10, steps + 1, 10)}


def test_never_stops_the_eventual_best_and_stops_a_far_worse_point() -> None:
    rule, rungs = Halving(margin=0.1), [10, 30]
    # a large LR that leads early but ends worse, crossing the eventual best (within the margin)
    fast = _curve(final=2.60, early=2.80)
    best = _curve(final=2.40, early=3.05)
    hopeless = _curve(final=4.00, early=4.50)
    slightly_worse = _curve(final=2.45, early=3.05)
    stops = _replay(rule, rungs, [fast, best, hopeless, slightly_worse])
    assert stops == [None, None, 10, None]
    # whatever the order, the best runs to the end
    for order in ([best, fast, hopeless], [hopeless, fast, best], [hopeless, best, fast]):
        assert _replay(rule, rungs, order)[order.index(best)] is None
        assert _replay(rule, rungs, order)[order.index(hopeless)] in (None, 10)
    assert _replay(rule, rungs, [best, hopeless]) == [None, 10]
    # a zero margin stops the eventual best when curves cross: why the default has one
    assert _replay(Halving(margin=0.0), rungs, [fast, best]) == [None, 10]


def test_a_diverged_sibling_and_an_empty_group_stop_nothing() -> None:
    rule = Halving()
    assert not rule.stops(5.0, [])
    assert not rule.stops(5.0, [math.inf, math.nan])
    assert rule.stops(5.0, [math.inf, 4.0])
    assert stop_step(rule, [10, 30], {}, [_curve(2.0, 2.5)]) is None  # diverged before a rung


def test_bad_halving_tables_are_refused_by_name() -> None:
    base = {"base": {"train": {"steps": 9, "eval_every": 3}}, "grid": {"lr": [0.001]}}
    for table, key in (({"eta": 1}, "halving.eta"), ({"margin": -0.1}, "halving.margin"),
                       ({"rungs": 0}, "halving.rungs"), ({"quota": 3}, "quota"),
                       ({"margin": "a"}, "halving.margin")):  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            parse_spec({**base, "halving": table})


SPEC = {
    "base": {
        "model": {"depth": 1, "head_dim": 16, "width": 32},
        "train": {"steps": 30, "eval_every": 10, "batch_size": 4, "seq_len": 32},
    },
    # 2^-10 .. 2^-4 by octaves; the fake's optimum is 2^-7 (test_sweep_fakes.synthetic_loss)
    "grid": {"lr": {"min": 2**-10, "max": 2**-4, "step": "2^1"}},
    "halving": {"margin": 0.1},
    "sweep": {"workers": 2},
}


@pytest.fixture
def curves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPTRANSFER_TRAIN_FN", "test_sweep_fakes:curve_train")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )


def _statuses(root: Path) -> dict[float, str]:
    df = store.load_runs(root)
    return {round(math.log2(r.lr)): r.status for r in df.itertuples()}


def test_a_sweep_stops_the_hopeless_point_and_a_resume_keeps_it_stopped(
    tmp_path: Path, curves: None
) -> None:
    counts = run_sweep(parse_spec(SPEC), tmp_path, quiet=True)
    statuses = _statuses(tmp_path)
    # queued middle-out (-7 first); 2^-10 and 2^-4 are 3 octaves off the optimum: 0.45 nats
    # worse than 2^-7 at the first rung (step 10), so stopped there
    assert statuses == {-10: "stopped", -9: "ok", -8: "ok", -7: "ok", -6: "ok", -5: "ok",
                        -4: "stopped"}  # fmt: skip
    assert (counts.done, counts.stopped) == (5, 2)
    df = store.load_runs(tmp_path)
    stopped = df[(df["status"] == "stopped") & (df["lr"] == 2**-4)].iloc[0]
    summary = store.read_json(store.run_dir(tmp_path, stopped["run_id"]) / "summary.json")
    assert summary["final_eval_loss"] is None and summary["steps"] == 10
    assert summary["last_eval_loss"] == pytest.approx(2.5 + 0.45 + 0.5 * (1 - 10 / 30))
    ok = df[df["status"] == "ok"]
    assert math.log2(ok.loc[ok["final_eval_loss"].idxmin(), "lr"]) == -7

    again = run_sweep(parse_spec(SPEC), tmp_path, quiet=True)
    assert again.skipped == 7 and _statuses(tmp_path) == statuses
    assert store.read_json(store.run_dir(tmp_path, stopped["run_id"]) / "summary.json") == summary

    screen = status_text(tmp_path)
    assert "7 runs: 5 ok, 0 diverged, 2 stopped" in screen
    assert "stopped" in screen.splitlines()[2]  # the table's header has a stopped column


def test_adaptive_search_with_halving_finds_the_same_optimum(tmp_path: Path, curves: None) -> None:
    spec = {**SPEC, "grid": {"lr": [2**-10, 2**-8]}, "sweep": {"workers": 2, "adaptive": True}}
    plain = {k: v for k, v in spec.items() if k != "halving"}
    run_sweep(parse_spec(plain), tmp_path / "plain", quiet=True)
    run_sweep(parse_spec(spec), tmp_path / "halving", quiet=True)
    optima = []
    for name in ("plain", "halving"):
        df = store.load_runs(tmp_path / name)
        ok = df[df["status"] == "ok"]
        optima.append(ok.loc[ok["final_eval_loss"].idxmin(), "lr"])
    assert optima[0] == optima[1] == 2**-7
    halved = store.load_runs(tmp_path / "halving")
    assert (halved["status"] == "stopped").any()
    assert halved["steps"].sum() < store.load_runs(tmp_path / "plain")["steps"].sum()


def test_fit_refinement_sweep_resumes_to_the_same_runs(tmp_path: Path, curves: None) -> None:
    """``refine = "fit"`` with halving finds the optimum 2^-7 without the quarter-octave
    neighbours the neighbour rule trains (the fake's bowl is exact: its vertex is 2^-7), and a
    resume re-creates the same runs and skips them all."""
    spec = {**SPEC, "grid": {"lr": [2**-10, 2**-8]},
            "sweep": {"workers": 2, "adaptive": True, "refine": "fit"}}  # fmt: skip
    run_sweep(parse_spec(spec), tmp_path, quiet=True)
    df = store.load_runs(tmp_path)
    ok = df[df["status"] == "ok"]
    assert ok.loc[ok["final_eval_loss"].idxmin(), "lr"] == 2**-7
    # start, extension at its spacing (halving stops 2^-10 and 2^-4: 2 points, no fit), the
    # best's neighbour at 2^(1/2) towards the larger LR, then the vertex 2^-7 (the neighbour
    # rule trains both neighbours of the best at 2^(1/2) and at 2^(1/4) as well)
    assert [round(4 * math.log2(lr)) for lr in sorted(df["lr"])] == [-40, -32, -30, -28, -24, -16]
    again = run_sweep(parse_spec(spec), tmp_path, quiet=True)
    assert again.skipped == len(df)
    assert sorted(store.load_runs(tmp_path)["run_id"]) == sorted(df["run_id"])


def test_groups_queue_middle_out_the_larger_lr_first() -> None:
    from hptransfer.sweep.runner import halving_order

    spec = parse_spec({"grid": {"lr": [2.0**k for k in range(-12, -1, 2)], "seed": [0, 1]}})
    order = halving_order(spec.expand(), lambda run: run.config.seed)
    seed0 = [round(math.log2(r.config.optimizer.lr)) for r in order if r.config.seed == 0]
    assert seed0 == [-6, -8, -4, -10, -2, -12]


def test_the_report_counts_a_stopped_run_and_never_uses_its_loss(tmp_path: Path) -> None:
    from test_report import synthetic_config, write_run, write_synthetic_sweep

    from hptransfer.report.build import build_report

    root = write_synthetic_sweep(tmp_path / "sweep")
    # stopped at a far-off LR with a loss below every optimum: were it read, the sp optimum moved
    stopped = {"status": "stopped", "final_eval_loss": None, "best_eval_loss": 0.5,
               "last_eval_loss": 0.5, "steps": 3}  # fmt: skip
    write_run(root, "stopped0", synthetic_config("sp", 512, 2.0**-12), stopped)
    html_path, summary_path = build_report(root, reference="sp")
    summary = json.loads(summary_path.read_text())
    assert summary["counts"]["stopped"] == 1
    head = {h["parameterization"]: h for h in summary["headline"]}
    assert head["sp"]["lr_at_width_max"] == pytest.approx(2.0**-9, rel=0.05)
    assert "1 stopped early" in html_path.read_text()
