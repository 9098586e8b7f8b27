"""Shampoo's inverse roots never stop a run: the eigh fallbacks (issue 14, item 3).

tests/data/shampoo_eigh_fail.pt is a saved stack of Shampoo statistics (16 x 128 x 128 float32,
rank 3 to 5, 123 to 125 all-zero rows each: an embedding's statistic when most tokens are
unseen) on which MKL's ``eigh`` failed in float32 and again in float64 with one thread (nanodo
with 8 tokens, widths 512 and 1024). Whether it fails depends on the machine's MKL code path,
so the fallback tests replace ``eigh`` by one that fails the same way: it raises on any matrix
with an all-zero row, in every dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

from hptransfer.optim import build_optimizer
from hptransfer.optim.shampoo import inverse_root

STACK = Path(__file__).parent.parent / "data" / "shampoo_eigh_fail.pt"
EPS = 1e-6  # Shampoo's default relative epsilon


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The sweep setting, in which the saved stack failed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stack() -> Tensor:
    return torch.load(STACK, weights_only=True)


def _svd_root(mats: Tensor) -> Tensor:
    """(M + eps max(lam) I)^(-1/4) in float64 by SVD (another LAPACK routine than eigh): for a
    symmetric PSD M, M = U S U^T."""
    u, s, _ = torch.linalg.svd(mats.double())
    shifted = s + EPS * s.amax(-1, keepdim=True)
    return (u * shifted.pow(-0.25).unsqueeze(-2)) @ u.mT


def _fails_on_zero_rows(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """Replace eigh by one that raises on a stack holding a matrix with an all-zero row (in
    every dtype, as MKL's did on the saved stack); returns the dtypes it was called with."""
    real_eigh, calls = torch.linalg.eigh, []

    def eigh(a: Tensor) -> tuple[Tensor, Tensor]:
        calls.append(a.dtype)
        if (a.abs().sum(-1) == 0).any():
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real_eigh(a)

    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    return calls


def _always_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def eigh(a: Tensor) -> tuple[Tensor, Tensor]:
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", eigh)


def _rel_err(got: Tensor, want: Tensor) -> float:
    diff = torch.linalg.matrix_norm(got.double() - want, ord=2)
    return (diff / torch.linalg.matrix_norm(want, ord=2)).max().item()


def test_saved_stack_gives_finite_accurate_roots(one_thread: None) -> None:
    """The real eigh on the saved stack, as the sweep ran it (one thread, float32 statistics):
    whichever path this machine's MKL takes, the roots are finite and match an SVD's."""
    stats = _stack()
    root, _ = inverse_root(stats, 4, EPS, True)
    assert root.dtype == torch.float32 and torch.isfinite(root).all()
    # float32 eigenvalues are off by ~1e-7 max(lam), against e = 1e-6 max(lam) on the
    # null space: a few percent there
    assert _rel_err(root, _svd_root(stats)) < 0.05


def test_eigh_failing_in_both_dtypes_falls_back_to_a_shifted_eigh(
    one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = _stack()
    calls = _fails_on_zero_rows(monkeypatch)
    root, fallbacks = inverse_root(stats, 4, EPS, True)
    # the stack in float32 and float64, then each matrix alone, then shifted
    assert calls[:2] == [torch.float32, torch.float64] and len(calls) == 2 + 2 * len(stats)
    assert fallbacks == len(stats)
    assert root.dtype == torch.float32
    # the shift is subtracted again: the same root as an unshifted decomposition in float64
    assert _rel_err(root, _svd_root(stats)) < 1e-6


def test_only_the_failing_matrices_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    x[1, :3] = 0.0  # three zero rows in the second matrix only
    stats = x @ x.mT
    _fails_on_zero_rows(monkeypatch)
    root, fallbacks = inverse_root(stats, 4, EPS, True)
    assert fallbacks == 1
    torch.testing.assert_close(root, _svd_root(stats), rtol=1e-9, atol=1e-9)


def test_eigh_failing_even_shifted_keeps_the_previous_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stats = _stack()[:3]
    previous = torch.randn(3, 128, 128)
    _always_fails(monkeypatch)
    root, fallbacks = inverse_root(stats, 4, EPS, True, previous_BxMxM=previous)
    assert fallbacks == 3
    assert torch.equal(root, previous)
    root, fallbacks = inverse_root(stats, 4, EPS, True)  # no previous root: no step
    assert fallbacks == 3 and torch.equal(root, torch.zeros_like(stats))


class EmbeddingRun:
    """Shampoo on a 6 x 5 embedding-like matrix whose gradient rows 3..5 stay zero (unseen
    tokens), so its statistic L has zero rows; roots at steps 1, 2, 4, 6, ..."""

    def __init__(self) -> None:
        self.gen = torch.Generator().manual_seed(1)
        self.w = torch.nn.Parameter(torch.randn(6, 5, generator=self.gen, dtype=torch.float64))
        groups = [{"params": [self.w], "lr": 0.05}]
        self.opt = build_optimizer("shampoo", groups, precondition_frequency=2)

    @property
    def state(self) -> dict:
        return self.opt.state[self.w]

    def step(self) -> Tensor:
        """One step; returns the weights' change."""
        before = self.w.detach().clone()
        grad = torch.randn(6, 5, generator=self.gen, dtype=torch.float64)
        grad[3:] = 0.0
        self.w.grad = grad
        self.opt.step()
        assert torch.isfinite(self.w).all()
        return self.w.detach() - before


def test_shampoo_trains_through_failing_eigh_and_counts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = EmbeddingRun()
    for _ in range(6):
        reference.step()
    assert "eigh_fallbacks" not in reference.state  # it appears with the first fallback
    _fails_on_zero_rows(monkeypatch)
    run = EmbeddingRun()
    for _ in range(6):
        run.step()
    # 4 refreshes; L (6 x 6) has zero rows each time, R (5 x 5) none
    assert run.state["eigh_fallbacks"] == 4
    torch.testing.assert_close(run.w, reference.w, rtol=1e-9, atol=1e-9)


def test_shampoo_keeps_its_roots_when_every_eigh_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    run = EmbeddingRun()
    run.step()
    run.step()
    roots = {k: v.clone() for k, v in run.state.items() if k.endswith("_root")}
    _always_fails(monkeypatch)
    for _ in range(3):  # steps 3 to 5: the refresh at step 4 fails for L and R
        assert run.step().abs().max() > 0  # the kept roots still give steps
    assert run.state["eigh_fallbacks"] == 2
    assert all(torch.equal(run.state[k], v) for k, v in roots.items())


def test_shampoo_without_any_root_makes_no_step(monkeypatch: pytest.MonkeyPatch) -> None:
    _always_fails(monkeypatch)
    run = EmbeddingRun()
    for _ in range(4):  # refreshes at steps 1, 2 and 4 all fail: no root yet, no step
        assert torch.equal(run.step(), torch.zeros(6, 5, dtype=torch.float64))
    assert run.state["eigh_fallbacks"] == 2 * 3
