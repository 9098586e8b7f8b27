"""The adaptive LR search on synthetic loss curves with a known optimum (no training)."""

from __future__ import annotations

import math

import pytest

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
