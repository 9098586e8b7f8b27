"""The contract every optimizer of ``build_optimizer`` keeps, run over one table."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from hptransfer.errors import ConfigError
from hptransfer.optim import OPTIMIZERS, build_optimizer, registry
from hptransfer.param.rules import optimizer_regime

torch.set_num_threads(1)
Tensor = torch.Tensor


def _shrink(p0: Tensor, lr: float, wd: float) -> Tensor:
    return p0 * (1 - lr * wd)


def _adam_l2(p0: Tensor, lr: float, wd: float) -> Tensor:
    # torch Adam's L2 decay: g = wd * p, first step m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps)
    g = wd * p0
    return p0 - lr * g / (g.abs() + 1e-8)


def _lamb(p0: Tensor, lr: float, wd: float) -> Tensor:
    # r = wd * w, so the step is lr * min(||w||, 10) * w / ||w||
    n = p0.norm()
    return p0 - lr * torch.clamp(n, max=10.0) * p0 / n


@dataclass(frozen=True)
class Entry:
    name: str
    knobs: dict[str, Any] = field(default_factory=dict)
    lr: float = 0.05
    has_eps: bool = True
    coupled: Callable[[Tensor, float, float], Tensor] = _shrink
    warmup: int = 0  # steps that only initialize state (no update)

    def __str__(self) -> str:
        return self.name + "".join(f"-{k}={v}" for k, v in self.knobs.items())


#: What the contract needs to know about an optimizer beyond its spec.
SPECIAL: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.1},
    "adam": {"coupled": _adam_l2},
    "adopt": {"warmup": 1},
    "lamb": {"coupled": _lamb},
    # default knobs (relative eps); frequency 3 so that stale roots occur within the tests
    "shampoo": {"knobs": {"precondition_frequency": 3}, "lr": 0.5},
}


def entry(name: str) -> Entry:
    """The contract's entry for a registered optimizer (its spec says whether it has an eps)."""
    return Entry(name, has_eps=registry.get(name).eps is not None, **SPECIAL.get(name, {}))


TABLE = [
    *(entry(name) for name in registry.names()),
    # torch SGD's L2 decay through Nesterov momentum: first step g + mu * b = (1 + mu) wd w
    Entry(
        "sgd",
        {"nesterov": True},
        lr=0.1,
        has_eps=False,
        coupled=lambda p0, lr, wd: p0 * (1 - 1.9 * lr * wd),
    ),
    Entry("sophia", {"variant": "h"}),
    Entry("shampoo", {"grafting": "adam", "max_preconditioner_dim": 4}, lr=0.3),
]
ROLES = ("hidden", "output", "vector")


def test_table_covers_every_optimizer() -> None:
    assert {e.name for e in TABLE} == set(OPTIMIZERS) == set(registry.names())
    regimes = {optimizer_regime(n) for n in OPTIMIZERS}  # the width rule's single source
    assert {r.kind for r in regimes} == {"family", "spectral"}


def _problem(dtype: torch.dtype = torch.float64) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (5, 3), (3,)]
    init = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    target = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    curv = [0.5 + 1.5 * torch.rand(s, generator=g, dtype=dtype) for s in shapes]
    return init, target, curv


def _loss(params: list[Tensor], target: list[Tensor], curv: list[Tensor]) -> Tensor:
    return sum(0.5 * (c * (p - t) ** 2).sum() for p, t, c in zip(params, target, curv))


def _make(
    e: Entry,
    dtype: torch.dtype = torch.float64,
    lrs: tuple[float, float, float] | None = None,
    group_extra: dict[int, dict[str, Any]] | None = None,
    **knobs: Any,
) -> tuple[list[Tensor], torch.optim.Optimizer]:
    init, _, _ = _problem(dtype)
    params = [t.clone().requires_grad_(True) for t in init]
    lrs = lrs or (e.lr, e.lr, e.lr)
    groups = [
        {"params": [p], "lr": lr, "role": r, "name": r, **(group_extra or {}).get(i, {})}
        for i, (p, r, lr) in enumerate(zip(params, ROLES, lrs))
    ]
    return params, build_optimizer(e.name, groups, **{**e.knobs, **knobs})


def _step(params: list[Tensor], opt: torch.optim.Optimizer, zero: bool = False) -> None:
    _, target, curv = _problem(params[0].dtype)
    opt.zero_grad(set_to_none=True)
    if zero:
        for p in params:
            p.grad = torch.zeros_like(p)
    else:
        _loss(params, target, curv).backward()
    opt.step()


def _updates(e: Entry, n: int = 1, **make_kw: Any) -> list[Tensor]:
    """Parameter changes made by the first ``n`` updating steps (after any warmup)."""
    params, opt = _make(e, **make_kw)
    for _ in range(e.warmup):
        _step(params, opt)
    before = [p.detach().clone() for p in params]
    for _ in range(n):
        _step(params, opt)
    return [p.detach() - b for p, b in zip(params, before)]


def check_descends_on_quadratic(e: Entry) -> None:
    params, opt = _make(e)
    _, target, curv = _problem()
    start = _loss(params, target, curv).item()
    for _ in range(40):
        _step(params, opt)
    assert _loss(params, target, curv).item() < 0.5 * start


def check_state_dict_round_trip_is_bit_identical(e: Entry) -> None:
    params_a, opt_a = _make(e)
    for _ in range(8):
        _step(params_a, opt_a)

    params_b, opt_b = _make(e)
    for _ in range(4):
        _step(params_b, opt_b)
    buf = io.BytesIO()
    torch.save({"opt": opt_b.state_dict(), "params": [p.detach() for p in params_b]}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    params_c, opt_c = _make(e)
    with torch.no_grad():
        for p, s in zip(params_c, saved["params"]):
            p.copy_(s)
    opt_c.load_state_dict(saved["opt"])
    for _ in range(4):
        _step(params_c, opt_c)
    for a, c in zip(params_a, params_c):
        assert torch.equal(a, c)


def check_params_without_grad_are_skipped(e: Entry) -> None:
    params, opt = _make(e)
    _, target, curv = _problem()
    frozen = params[1]
    before = frozen.detach().clone()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        _loss(params, target, curv).backward()
        frozen.grad = None
        opt.step()
    assert torch.equal(frozen, before)
    assert not opt.state.get(frozen)
    assert opt.state.get(params[0])


def check_dtype_preserved(e: Entry) -> None:
    for dtype in (torch.float32, torch.float64):
        params, opt = _make(e, dtype=dtype)
        for _ in range(3):
            _step(params, opt)
        for p in params:
            assert p.dtype == dtype and torch.isfinite(p).all()
            for v in opt.state[p].values():
                if isinstance(v, Tensor) and v.shape == p.shape:
                    assert v.dtype == dtype


def check_lr_scheduler_scales_every_group(e: Entry) -> None:
    """After one common step, halving every group's lr halves every group's next update."""
    ups = []
    for halve in (False, True):
        params, opt = _make(e, lrs=(e.lr, e.lr / 2, e.lr / 4))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k, h=halve: 0.5 if (h and k > e.warmup) else 1.0
        )
        for _ in range(e.warmup + 1):
            _step(params, opt)
            sched.step()
        before = [p.detach().clone() for p in params]
        _step(params, opt)
        ups.append([p.detach() - b for p, b in zip(params, before)])
        if halve:
            assert [g["lr"] for g in opt.param_groups] == [e.lr / 2, e.lr / 4, e.lr / 8]
    for full, half in zip(*ups):
        assert full.abs().max() > 0
        torch.testing.assert_close(half, 0.5 * full, rtol=1e-9, atol=1e-12)


def check_group_lr_and_eps_are_honoured(e: Entry) -> None:
    base = _updates(e)
    doubled = _updates(e, lrs=(2 * e.lr, e.lr, e.lr))
    torch.testing.assert_close(doubled[0], 2 * base[0], rtol=1e-9, atol=1e-12)
    for b, d in zip(base[1:], doubled[1:]):
        assert torch.equal(b, d)
    if e.has_eps:
        big_eps = _updates(e, group_extra={2: {"eps": 1e3}})
        assert not torch.allclose(big_eps[2], base[2])
        assert torch.equal(big_eps[0], base[0])


def test_unknown_name_or_knob_raises() -> None:
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ConfigError, match="unknown optimizer 'adamx'.*adamw"):
        build_optimizer("adamx", [{"params": [p], "lr": 0.1}])
    with pytest.raises(ConfigError, match="unknown knob.*'adam_atan2'.*valid: a, b, betas"):
        build_optimizer("adam_atan2", [{"params": [p], "lr": 0.1}], eps=1e-8)
    with pytest.raises(ConfigError, match="unknown wd_mode"):
        build_optimizer("adamw", [{"params": [p], "lr": 0.1}], wd_mode="decoupled")


def check_weight_decay_modes(e: Entry) -> None:
    """Zero gradients, so only the decay moves the weights; groups have different lrs."""
    wd, lrs = 0.1, (0.1, 0.05, 0.02)
    init = _problem()[0]
    for mode in ("coupled", "independent"):
        params, opt = _make(e, lrs=lrs, weight_decay=wd, wd_mode=mode)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 if k >= e.warmup + 1 else 1.0)
        for _ in range(e.warmup + 1):
            _step(params, opt, zero=True)
            sched.step()
        first = [p.detach().clone() for p in params]
        _step(params, opt, zero=True)
        for p0, p1, p2, lr in zip(init, first, params, lrs):
            if mode == "coupled":
                torch.testing.assert_close(p1, e.coupled(p0, lr, wd), rtol=1e-12, atol=1e-12)
            else:  # follows the schedule (x0.5 on the second step), not the group lr factor
                torch.testing.assert_close(p1, p0 * (1 - wd), rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(p2, p1 * (1 - wd * 0.5), rtol=1e-12, atol=1e-12)


#: The contract, one check per property; a new optimizer (tests/optim/test_registry.py's toy
#: one included) runs through all of them.
CHECKS = (
    check_descends_on_quadratic,
    check_state_dict_round_trip_is_bit_identical,
    check_params_without_grad_are_skipped,
    check_dtype_preserved,
    check_lr_scheduler_scales_every_group,
    check_group_lr_and_eps_are_honoured,
    check_weight_decay_modes,
)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("e", TABLE, ids=str)
def test_contract(e: Entry, check: Callable[[Entry], None]) -> None:
    check(e)


@pytest.mark.parametrize("variant", ["g", "h"])
def test_sophia_refresh_curvature_updates_state_and_leaves_no_grads(variant: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Tanh(), torch.nn.Linear(8, 11))
    tokens = torch.randint(0, 11, (2, 6))
    targets = torch.randint(0, 11, (2, 6))
    targets[0, 0] = -100  # ignored position
    groups = [{"params": list(model.parameters()), "lr": 1e-2, "role": "hidden"}]
    opt = build_optimizer("sophia", groups, variant=variant, curvature_interval=5)
    assert opt.curvature_interval == 5
    opt.refresh_curvature(lambda: model(tokens), targets)
    for p in model.parameters():
        assert p.grad is None
        h = opt.state[p]["hessian"]
        assert torch.isfinite(h).all() and h.abs().sum() > 0
        if variant == "g":
            assert (h >= 0).all()
    loss = torch.nn.functional.cross_entropy(model(tokens).reshape(-1, 11), targets.reshape(-1))
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_shampoo_512_is_finite() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(512, 512) / 512**0.5)
    opt = build_optimizer("shampoo", [{"params": [w], "lr": 1e-3, "role": "hidden"}])
    for _ in range(3):
        w.grad = torch.randn(8, 512).T @ torch.randn(8, 512) * 1e-3  # low rank, ill-conditioned
        opt.step()
    assert torch.isfinite(w).all()


def test_muon_takes_betas_for_its_adamw_part_and_momentum_for_muon() -> None:
    """A config's optimizer.betas / optimizer.momentum reach MuonAdamW's two halves."""
    from hptransfer.assemble import build
    from hptransfer.config import RunConfig
    from hptransfer.optim.muon import routes_to_muon

    cfg = RunConfig().replace(
        **{
            "model.width": 32,
            "model.depth": 1,
            "model.head_dim": 16,
            "optimizer.name": "muon",
            "optimizer.betas": [0.5, 0.75],
            "optimizer.momentum": 0.25,
        }
    )
    s = build(cfg.validate())
    opt = s.optimizer
    s.parameterization.remove()
    muon = [g for g in opt.param_groups if routes_to_muon(g)]
    adamw = [g for g in opt.param_groups if not routes_to_muon(g)]
    assert muon and adamw
    assert all(g["momentum"] == 0.25 for g in muon)
    assert all(g["betas"] == (0.5, 0.75) for g in adamw)
    # and they act: the moments after two steps with gradients g1, g2 (torch's EMA forms)
    w_h, w_a = muon[0]["params"][0], adamw[0]["params"][0]
    g1 = {p: torch.randn_like(p) for p in (w_h, w_a)}
    g2 = {p: torch.randn_like(p) for p in (w_h, w_a)}
    for grads in (g1, g2):
        for g in opt.param_groups:
            for p in g["params"]:
                p.grad = grads.get(p, torch.zeros_like(p))
        opt.step()
    buf = 0.25 * (0.75 * g1[w_h]) + 0.75 * g2[w_h]
    torch.testing.assert_close(opt.state[w_h]["momentum_buffer"], buf)
    m = 0.5 * (0.5 * g1[w_a]) + 0.5 * g2[w_a]
    v = 0.75 * (0.25 * g1[w_a] ** 2) + 0.25 * g2[w_a] ** 2
    torch.testing.assert_close(opt.state[w_a]["exp_avg"], m)
    torch.testing.assert_close(opt.state[w_a]["exp_avg_sq"], v)


def test_shampoo_root_redoes_a_failed_float32_eigh_in_float64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MKL's float32 eigh returns NaN for some rank-deficient statistics (e.g. an embedding's,
    whose unseen tokens give zero rows): the root is then computed in float64."""
    from hptransfer.optim.shampoo import inverse_root

    g = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    stats = (g @ g.T).unsqueeze(0)  # rank 2 of 6
    expected, _ = inverse_root(stats.double(), 4, 1e-6, True)
    real_eigh, dtypes = torch.linalg.eigh, []

    def nan_in_float32(a: Tensor) -> tuple[Tensor, Tensor]:
        dtypes.append(a.dtype)
        lam, q = real_eigh(a)
        return (lam * float("nan"), q) if a.dtype == torch.float32 else (lam, q)

    monkeypatch.setattr(torch.linalg, "eigh", nan_in_float32)
    root, _ = inverse_root(stats, 4, 1e-6, True)
    assert dtypes == [torch.float32, torch.float64]
    assert root.dtype == torch.float32
    torch.testing.assert_close(root, expected.float())


def test_shampoo_makes_no_step_from_roots_of_an_all_zero_statistic() -> None:
    """Zero gradients until the roots go stale (frequency 2: roots at steps 1, 2, 4, ...), then
    a gradient at step 3: a relative eps of a zero statistic is 0, and the stale root must give
    no step rather than an infinite one; the refresh at step 4 then moves the weights."""
    w = torch.nn.Parameter(torch.ones(4, 3))
    opt = build_optimizer("shampoo", [{"params": [w], "lr": 0.1}], precondition_frequency=2)
    for step, g in enumerate([0.0, 0.0, 1.0, 1.0], start=1):
        w.grad = torch.full_like(w, g)
        opt.step()
        assert torch.isfinite(w).all()
        assert torch.equal(w.detach(), torch.ones(4, 3)) == (step < 4), step


def test_lamb_clamp_false_means_no_clamp() -> None:
    """A TOML config cannot write None: ``clamp = false`` turns the clamp off too."""
    g = torch.Generator().manual_seed(0)
    w0 = 20.0 * torch.randn(6, 5, generator=g)  # Frobenius norm > 10: the clamp would bind
    grad = torch.randn(6, 5, generator=g)
    out = []
    for clamp in (None, False, 10.0):
        w = w0.clone().requires_grad_(True)
        w.grad = grad.clone()
        build_optimizer("lamb", [{"params": [w], "lr": 0.1}], clamp=clamp).step()
        out.append(w.detach())
    assert torch.equal(out[0], out[1]) and not torch.allclose(out[0], out[2])
