"""The sweep's cost up front: the estimate on a fake timer; a real dry run writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hptransfer.sweep.cost import StepCost, concurrency, duration, estimate, n_evals, timing_key
from hptransfer.sweep.spec import parse_spec

SPEC = {
    "base": {
        "model.depth": 1,
        "model.head_dim": 16,
        "param.base_width": 32,
        "train.steps": 10,
        "train.batch_size": 4,
        "train.seq_len": 32,
        "train.eval_every": 4,
        "train.eval_batches": 2,
    },
    "grid": {
        "model.width": [32, 64],
        "param.name": ["mup", "sp"],
        "seed": [0, 1],
        "optimizer.lr": [0.001, 0.004, 0.016],
    },
}


def fake_timer(calls: list) -> callable:
    """Step cost proportional to width: build 1 s, step width/32 s, eval batch width/64 s."""

    def time_keys(configs):
        calls.append([c.model.width for c in configs])
        return [StepCost(1.0, c.model.width / 32, c.model.width / 64) for c in configs]

    return time_keys


def test_estimate_from_a_fake_timer():
    runs = parse_spec(SPEC).expand()
    calls: list = []
    cost = estimate(runs, fake_timer(calls), workers=3, threads=1, cpus=8)
    # one timing per width: LR, seed and parameterization do not change the work of a step
    assert calls == [[32, 64]]
    assert (cost.runs, cost.steps, cost.tokens, cost.timed) == (24, 240, 240 * 4 * 32, 2)
    assert n_evals(runs[0].config) == 3  # steps 4, 8 and the last (10)
    # per run: build 1 + 10 steps + 3 evals x 2 batches
    per_32 = 1 + 10 * 1 + 3 * 2 * 0.5
    per_64 = 1 + 10 * 2 + 3 * 2 * 1
    assert cost.run_seconds == pytest.approx(12 * per_32 + 12 * per_64)
    assert cost.concurrency == 3
    assert cost.seconds == pytest.approx((12 * per_32 + 12 * per_64) / 3)


def test_concurrency_is_capped_by_cores_and_runs_and_the_longest_run_bounds_the_time():
    assert concurrency(8, 100, threads=2, device="cpu", cpus=4) == 2
    assert concurrency(8, 100, threads=2, device="cuda", cpus=4) == 8
    assert concurrency(8, 3, threads=1, device="cpu", cpus=16) == 3
    runs = parse_spec({**SPEC, "grid": {**SPEC["grid"], "seed": [0], "param.name": ["mup"],
                                        "optimizer.lr": [0.001]}}).expand()  # fmt: skip
    cost = estimate(runs, fake_timer([]), workers=16, cpus=16)
    assert cost.seconds == pytest.approx(1 + 10 * 2 + 3 * 2 * 1)  # the width-64 run alone


def test_timing_key_ignores_lr_seed_and_parameterization():
    a, *rest = [r.config for r in parse_spec(SPEC).expand()]
    same = [c for c in rest if timing_key(c) == timing_key(a)]
    assert {c.model.width for c in same} == {32} and len(same) == 11


def test_cost_lines_and_durations():
    assert [duration(s) for s in (42, 750, 11520)] == ["42 s", "12.5 min", "3.2 h"]
    cost = estimate(parse_spec(SPEC).expand(), fake_timer([]), workers=2, cpus=2)
    lines = cost.lines()
    assert lines[0] == "24 runs, 240 training steps, 30,720 tokens"
    assert lines[1].startswith("estimated time: 4.1 min at 2 run(s) at once (8.2 min of runs")
    assert len(lines) == 2


def test_adaptive_sweeps_add_the_neighbours_of_each_optimum_at_each_finer_spacing():
    # the neighbour refinement (the default is fit: the next test)
    spec = parse_spec({**SPEC, "sweep": {"adaptive": True}})
    runs = spec.expand()
    calls: list = []
    # start spacing 2^2 > 2^(1/2) > 2^(1/4): 2 x 2 LRs per search, each for both seeds
    cost = estimate(
        runs, fake_timer(calls), 2, cpus=2, search_of=spec.settings_key, refine="neighbours"
    )
    assert cost.added_runs == 4 * 4 * 2  # 4 searches (2 widths x 2 parameterizations)
    per_32, per_64 = 1 + 10 + 3, 1 + 20 + 6
    extra = 2 * (8 * per_32 + 8 * per_64)  # 8 added runs per width and parameterization
    assert cost.added_seconds == pytest.approx((12 * per_32 + 12 * per_64 + extra) / 2)
    assert "at least 32 runs" in cost.lines()[2] and len(cost.lines()) == 3
    # refining to 2^(1/2) only: the neighbours at 2^(1/2)
    fewer = estimate(
        runs,
        fake_timer([]),
        2,
        cpus=2,
        search_of=spec.settings_key,
        fine=2**0.5,
        refine="neighbours",
    )
    assert fewer.added_runs == 4 * 2 * 2
    # a starting grid on the refinement lattice: the best's neighbours may all be on it
    lrs = [2.0**-10 * 2 ** (k / 4) for k in range(9)]
    dense = parse_spec({**SPEC, "grid": {**SPEC["grid"], "optimizer.lr": lrs}})
    assert (
        estimate(
            dense.expand(), fake_timer([]), 2, search_of=dense.settings_key, refine="neighbours"
        ).added_runs
        == 0
    )
    # one starting LR: its 4 neighbours, for each seed
    one = parse_spec({**SPEC, "grid": {**SPEC["grid"], "optimizer.lr": [0.001]}})
    assert (
        estimate(
            one.expand(), fake_timer([]), 2, search_of=one.settings_key, refine="neighbours"
        ).added_runs
        == 32
    )


def test_a_fit_refinement_may_add_no_run_beyond_three_starting_lrs():
    spec = parse_spec({**SPEC, "sweep": {"adaptive": True}})  # fit: the default refinement
    runs = spec.expand()  # 3 starting LRs per search: the fit's vertex may be one of them
    cost = estimate(
        runs, fake_timer([]), 2, search_of=spec.settings_key, refine=spec.settings.refine
    )
    assert cost.added_runs == 0 and "possibly none" in cost.lines()[2]
    one = parse_spec({**SPEC, "grid": {**SPEC["grid"], "optimizer.lr": [0.001]}})
    fit = estimate(one.expand(), fake_timer([]), 2, search_of=one.settings_key, refine="fit")
    assert fit.added_runs == 4 * 2 * 2  # 2 more LRs for a parabola, 4 searches, 2 seeds


def test_dry_run_times_the_models_and_writes_nothing(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[base]\nmodel.depth = 1\nmodel.head_dim = 16\nparam.base_width = 32\n'
        'train.steps = 50\ntrain.batch_size = 4\ntrain.seq_len = 32\ntrain.eval_every = 25\n'
        '[grid]\nmodel.width = [32, 64]\nlr = [0.001, 0.004]\n[sweep]\nworkers = 2\n'
    )  # fmt: skip
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-m", "hptransfer", "sweep", str(spec), "--dry-run"],
        cwd=work, capture_output=True, text=True, check=True, timeout=120, env=env,
    )  # fmt: skip
    assert len(out.stdout.splitlines()) == 4
    err = out.stderr.splitlines()
    assert err[0] == "# 4 runs, 200 training steps, 25,600 tokens"
    assert err[1].startswith("# estimated time: ") and "2 distinct model(s)" in err[1]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cwd", "spec.toml"]
    assert not Path(spec.parent, "hpt-results").exists()
