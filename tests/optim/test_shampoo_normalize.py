"""Shampoo's step-size safeguards: ``normalize="clip"`` (default) and ``"spectral"``.

With roots computed from statistics that include the current gradient (``L >= G G^T``,
``R >= G^T G``), ``||L^-1/4 G R^-1/4||_2 <= ||L^-1/2 G||^1/2 ||G R^-1/2||^1/2 <= 1`` (Heinz
inequality), so clipping each block's spectral norm at 1 is a no-op with fresh roots and acts
only on steps that use stale roots, where a new gradient direction can be amplified by up to
eps^-1/4 per side.
"""

import pytest
import torch

from hptransfer.optim import build_optimizer
from hptransfer.optim.shampoo import fresh_bound, top_singular_value

DT = torch.float64


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 8, generator=g, dtype=DT)
    xs = [torch.randn(6, 8, generator=g, dtype=DT) for _ in range(12)]
    ys = [torch.randn(6, 12, generator=g, dtype=DT) for _ in range(12)]
    return w, xs, ys


def _block_steps(lr: float = 0.1, **knobs) -> list[float]:
    """Spectral norm of each step / lr on a 12x8 matrix (one block), rank-6 gradients."""
    w0, xs, ys = _problem()
    w = w0.clone().requires_grad_(True)
    opt = build_optimizer("shampoo", [{"params": [w], "lr": lr}], **knobs)
    norms = []
    for x, y in zip(xs, ys):
        before = w.detach().clone()
        opt.zero_grad()
        ((x @ w.T - y) ** 2).mean().backward()
        opt.step()
        norms.append(torch.linalg.matrix_norm(w.detach() - before, ord=2).item() / lr)
    return norms


@pytest.mark.parametrize("momentum,decay", [(0.0, None), (0.5, None), (0.0, 0.9), (0.9, 0.95)])
def test_clip_is_a_no_op_with_fresh_roots(momentum, decay):
    fresh = {"precondition_frequency": 1, "eps": 1e-6, "momentum": momentum}
    fresh["statistics_decay"] = decay
    plain = _block_steps(normalize=None, **fresh)
    bounds = [fresh_bound(t, momentum, decay) for t in range(1, len(plain) + 1)]
    assert all(s <= b * (1 + 1e-9) for s, b in zip(plain, bounds))  # the bound holds
    assert max(s / b for s, b in zip(plain, bounds)) > 0.3  # and is not vacuous
    assert _block_steps(normalize="clip", **fresh) == pytest.approx(plain, rel=1e-12)


def test_fresh_bound_closed_form():
    assert fresh_bound(7, 0.0, None) == fresh_bound(7, 0.9, None) == 1.0
    assert fresh_bound(1, 0.9, 0.95) == pytest.approx(1.0)
    # EMA statistics, momentum 0.9: sum over s of a_s w_s^-1/2 written out
    t, b1, b2 = 6, 0.9, 0.95
    a = [(1 - b1) * b1 ** (t - s) / (1 - b1**t) for s in range(1, t + 1)]
    w = [(1 - b2) * b2 ** (t - s) / (1 - b2**t) for s in range(1, t + 1)]
    assert fresh_bound(t, b1, b2) == pytest.approx(sum(x / y**0.5 for x, y in zip(a, w)))


def test_clip_bounds_steps_with_stale_roots():
    stale = {"precondition_frequency": 5, "eps": 1e-6}  # roots at steps 1-5, then 10
    plain = _block_steps(normalize=None, **stale)
    clipped = _block_steps(normalize="clip", **stale)
    assert max(plain) > 2.0  # stale roots amplify the new directions
    # the norm comes from 2 power iterations a step: a lower bound, close when one direction
    # dominates (an amplified one), up to ~15% low when the top singular values are close
    assert max(clipped) <= 1.15
    assert clipped[:5] == pytest.approx(plain[:5], rel=1e-12)  # fresh roots: untouched


def test_spectral_normalize_gives_unit_steps():
    steps = _block_steps(normalize="spectral", precondition_frequency=5, eps=1e-6)
    assert steps == pytest.approx([1.0] * len(steps), rel=0.15)  # see the clip test
    assert steps[0] == pytest.approx(1.0, rel=1e-3)  # first step: 10 iterations


def test_power_iteration_finds_the_top_singular_value():
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(5, 16, 9, generator=g, dtype=DT)).Q
    w = torch.linalg.qr(torch.randn(5, 9, 9, generator=g, dtype=DT)).Q
    s = torch.linspace(1.0, 0.1, 9, dtype=DT) * torch.arange(1, 6, dtype=DT)[:, None]
    s[:, 0] *= 1.5  # a gap of 1.5: the error falls like 1.5^(-2 iters)
    mats = u * s[:, None, :] @ w.mT
    v = torch.randn(5, 9, 1, generator=g, dtype=DT)
    assert top_singular_value(mats, v, 40) == pytest.approx(s[:, 0], rel=1e-9)
    rank1 = torch.randn(3, 7, 1, dtype=DT) @ torch.randn(3, 1, 4, dtype=DT)
    est = top_singular_value(rank1, torch.ones(3, 4, 1, dtype=DT), 1)
    assert est == pytest.approx(torch.linalg.matrix_norm(rank1, ord=2), rel=1e-12)


def test_unknown_normalize_is_refused():
    w = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="normalize"):
        build_optimizer("shampoo", [{"params": [w], "lr": 0.1}], normalize="rms")
