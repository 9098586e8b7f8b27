"""The adaptive LR search on synthetic loss curves with a known optimum (no training)."""

from __future__ import annotations

import math
import random

import pytest

from hptransfer.config import ConfigError
from hptransfer.sweep import parse_spec
from hptransfer.sweep.search import LRSearch
from hptransfer.sweep.spec import lr_range


def bowl(optimum: float, diverge_above: float = 8.0):
    """Loss quadratic in log2(lr) around ``optimum``; diverged (None) above 8x the optimum."""

    def loss(lr: float) -> float | None:
        if lr > diverge_above * optimum:
            return None
        return 2.0 + 0.1 * math.log2(lr / optimum) ** 2

    return loss


def search(start: list[float], loss) -> LRSearch:
    s = LRSearch(start=start)
    for _ in range(100):
        todo = s.propose()
        if not todo:
            return s
        for lr in todo:
            s.record(lr, loss(lr))
    raise AssertionError("search did not stop")


START = lr_range({"min": 2**-12, "max": 2**-4, "step": "2^2"})


@pytest.mark.parametrize("log2_opt", [-12.6, -9.3, -7.0, -4.2, -1.4])
def test_finds_optimum_within_a_quarter_octave(log2_opt: float) -> None:
    s = search(START, bowl(2**log2_opt))
    best_lr, _ = s.best()
    assert abs(math.log2(best_lr) - log2_opt) <= 0.25 / 2 + 1e-9  # nearest 2^(1/4) point
    lrs = sorted(lr for lr, _ in s.results.values())
    assert lrs[0] < best_lr < lrs[-1], "optimum bracketed on both sides"
    dense = len(lr_range({"min": 2**-14, "max": 2**-1, "step": "2^(1/4)"}))
    assert len(s.results) <= 0.5 * dense


def test_upward_extension_stops_at_1p2_times_best() -> None:
    s = search([2**-10], bowl(2**-7, diverge_above=1e9))  # never diverges
    points = sorted(s.results.values())
    best = s.best()[1]
    assert points[-1][1] > 1.2 * best >= points[-2][1]


def test_upward_extension_stops_at_divergence() -> None:
    s = search([2**-10], bowl(2**-7, diverge_above=2**0.5))
    assert max(s.results.values())[1] is None
    assert sum(loss is None for _, loss in s.results.values()) == 1


def test_all_diverged_start_extends_downward() -> None:
    s = search([2**-2, 2**-1], bowl(2**-9))
    assert abs(math.log2(s.best()[0]) + 9) <= 0.125


def test_done_search_proposes_nothing_and_is_deterministic() -> None:
    a = search(START, bowl(2**-7))
    b = search(START, bowl(2**-7))
    assert a.propose() == [] and a.results == b.results


def test_max_points_caps_the_search() -> None:
    s = LRSearch(start=[1e-3], max_points=5)
    for _ in range(20):
        for lr in s.propose():
            s.record(lr, 1.0 / lr)  # always better upward: never stops by itself
    assert len(s.results) == 5


def test_upward_extension_strides_at_the_starting_grids_spacing() -> None:
    """A plateau of large LRs that never diverge is crossed in the grid's own strides."""

    def plateau(lr: float) -> float:
        if lr > 2**3:
            return 3.0  # > 1.2 x any best so far
        return min(2.0 + 0.1 * math.log2(lr / 2**-7) ** 2, 2.3)

    s = search(START, plateau)  # START: 2^-12 .. 2^-4 in steps of 2^2
    above = sorted(math.log2(lr) for lr, _ in s.results.values() if lr > 2**-4)
    assert above == [-2.0, 0.0, 2.0, 4.0]  # 2^2 strides up to the first loss > 1.2 x best
    assert abs(math.log2(s.best()[0]) + 7) <= 0.125


def family(kind: str, log2_opt: float, seed: int = 0):
    """Synthetic LR curves around a known optimum (x = log2(lr / optimum)), diverged (None)
    above 16x it: lopsided (flat below, steep above), flat-bottomed (flat within a quarter
    octave), noisy (a bowl plus 3 mnats of noise, fixed per LR and seed)."""
    shape = {
        "lopsided": lambda x: 0.02 * x * x + (0.05 * x**3 if x > 0 else 0.0),
        "flat": lambda x: 0.05 * max(0.0, abs(x) - 0.25) ** 2,
        "noisy": lambda x: 0.05 * x * x,
    }[kind]

    def loss(lr: float) -> float | None:
        x = math.log2(lr) - log2_opt
        if x > 4:
            return None
        noise = random.Random(f"{seed}/{math.log2(lr):.6f}").gauss(0, 0.003)
        return 3.0 + shape(x) + (noise if kind == "noisy" else 0.0)

    return loss


def refined(start: list[float], loss, refine: str) -> LRSearch:
    s = LRSearch(start=start, refine=refine)
    while todo := s.propose():
        for lr in todo:
            s.record(lr, loss(lr))
    return s


DENSE = lr_range({"min": 2**-14, "max": 2**0, "step": "2^(1/4)"})


@pytest.mark.parametrize("kind", ["lopsided", "flat", "noisy"])
def test_fit_refinement_finds_the_optimum_for_fewer_runs(kind: str) -> None:
    """Over optima spread across the grid, the fit's optimum (find_optima on the search's
    points, what the report gives) is within a quarter octave of the dense 2^(1/4) grid's
    (find_optima on all its points), and its best point within a quarter octave of the dense
    grid's best, for at least 2 runs a search fewer than the neighbour rule."""
    runs = {"neighbours": 0, "fit": 0}
    for k in range(12):
        log2_opt = -11.0 + 0.61 * k
        loss = family(kind, log2_opt, k)
        for refine in runs:
            s = refined(START, loss, refine)
            runs[refine] += len(s.results)
        dense = LRSearch(start=DENSE)
        for lr in DENSE:
            dense.record(lr, loss(lr))
        estimate, dense_estimate = s.fit(), dense.fit()
        assert estimate is not None and estimate[1] and dense_estimate is not None
        assert abs(math.log2(estimate[0] / dense_estimate[0])) <= 0.25
        assert abs(math.log2(s.best()[0] / dense.best()[0])) <= 0.25 + 1e-9
    assert runs["fit"] <= runs["neighbours"] - 2 * 12


def test_fit_refinement_is_a_function_of_the_results_alone() -> None:
    """A resumed search re-records its results in any order and proposes the same LRs."""
    loss = family("lopsided", -7.3)
    done = refined(START, loss, "fit")
    order = sorted(done.results.values(), key=lambda p: -p[0])
    for cut in range(len(order)):
        replay = LRSearch(start=START, refine="fit")
        for lr, value in order[:cut]:
            replay.record(lr, value)
        again = LRSearch(start=START, refine="fit")
        for lr, value in order[:cut][::-1]:
            again.record(lr, value)
        assert replay.propose() == again.propose()
    assert refined(START, loss, "fit").results == done.results


def test_bad_refine_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"sweep\.refine: unknown value 'grid'"):
        parse_spec({"grid": {"lr": [1e-3]}, "sweep": {"adaptive": True, "refine": "grid"}})
