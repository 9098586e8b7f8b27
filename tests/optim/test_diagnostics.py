"""optimizer_diagnostics: underflow fraction, LAMB trust ratio, Sophia clip rate."""

from __future__ import annotations

import pytest
import torch

from hptransfer.optim import build_optimizer
from hptransfer.optim.diagnostics import optimizer_diagnostics

torch.set_num_threads(1)


def _setup(name: str, **knobs: object) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """Two groups: "small" has gradients far below its eps, "large" far above."""
    small = torch.nn.Parameter(torch.ones(4, 3))
    large = torch.nn.Parameter(torch.ones(5))
    groups = [
        {"params": [small], "lr": 1e-2, "eps": 1.0, "role": "output", "name": "small"},
        {"params": [large], "lr": 1e-2, "eps": 1e-8, "role": "vector", "name": "large"},
    ]
    opt = build_optimizer(name, groups, **knobs)
    for _ in range(3):
        small.grad = torch.full_like(small, 1e-3)
        small.grad[0, 0] = 10.0  # one coordinate above eps
        large.grad = torch.full_like(large, 1.0)
        opt.step()
    return [small, large], opt


@pytest.mark.parametrize("name", ["adam", "adamw", "adam_ps", "adopt", "lamb", "muon"])
def test_underflow_fraction(name: str) -> None:
    (small, large), opt = _setup(name)
    d = optimizer_diagnostics(name, opt, {small: "small", large: "large"})
    assert d["underflow/small"] == pytest.approx(11 / 12)
    assert d["underflow/large"] == 0.0


@pytest.mark.parametrize("name", ["sgd", "adam_atan2", "shampoo", "adafactor"])
def test_no_underflow_key_without_an_eps_floor(name: str) -> None:
    (small, large), opt = _setup(name)
    assert not any(
        k.startswith("underflow/") for k in optimizer_diagnostics(name, opt, {small: "s"})
    )


def test_lamb_trust_ratio_matches_definition() -> None:
    (small, large), opt = _setup("lamb", bias_correction=False)
    d = optimizer_diagnostics("lamb", opt, {small: "small", large: "large"})
    st = opt.state[large]
    r = st["exp_avg"] / (st["exp_avg_sq"].sqrt() + 1e-8)
    # the ratio stored at the last step used the weights before that step: recompute them
    w_before = large.detach() + 1e-2 * d["trust_ratio/large"] * r
    assert d["trust_ratio/large"] == pytest.approx(
        (min(w_before.norm().item(), 10.0) / r.norm()).item(), rel=1e-5
    )


def test_sophia_clip_rate() -> None:
    p = torch.nn.Parameter(torch.zeros(4))
    opt = build_optimizer("sophia", [{"params": [p], "lr": 1e-2}], rho=1.0)
    p.grad = torch.tensor([1.0, 1.0, 1.0, 0.0])
    opt.step()
    # no curvature yet: every coordinate with a nonzero momentum is clipped
    assert optimizer_diagnostics("sophia", opt, {p: "p"}) == {"clip_rate/p": 0.75}
    # m = 0.035; h = 0.01 * estimate: |m| / h = 1.75 (clipped) for the third coordinate
    opt.update_curvature([torch.tensor([0.0, 1e9, 2.0, 1e9])])
    assert optimizer_diagnostics("sophia", opt, {p: "p"}) == {"clip_rate/p": 0.5}


def test_unnamed_and_stateless_params_are_skipped() -> None:
    (small, large), opt = _setup("adamw")
    fresh = torch.nn.Parameter(torch.ones(2))
    assert set(optimizer_diagnostics("adamw", opt, {large: "large", fresh: "fresh"})) == {
        "underflow/large"
    }
