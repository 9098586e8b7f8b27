"""Numerical parity of the in-house optimizers with their references (float64, 10 steps).

Each test runs the same small fixed problem (same initial parameters, same data per step)
through our optimizer and the reference, and compares the parameter *displacements*
``w_t - w_0`` after every step: ``max|d_ours - d_ref| <= tol * max|d_ref|`` (stricter than
comparing the parameters themselves, whose size hides the updates).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from adam_atan2_pytorch import AdamAtan2 as RefAdamAtan2
from pytorch_optimizer import ADOPT as RefADOPT
from pytorch_optimizer import Lamb as RefLamb
from pytorch_optimizer import Shampoo as RefShampoo
from pytorch_optimizer import SophiaH as RefSophiaH

from hptransfer.optim import build_optimizer

torch.set_num_threads(1)
DT = torch.float64
STEPS = 10
TOL = 1e-6


def _init() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 4, generator=g, dtype=DT)
    big = 6.0 * torch.randn(4, 3, generator=g, dtype=DT)  # Frobenius norm > 10 (LAMB clamp)
    b = torch.randn(3, generator=g, dtype=DT)
    return [w, big, b]


def _loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 5, generator=g, dtype=DT)
    y = torch.randn(8, 3, generator=g, dtype=DT)
    w, big, b = params
    h = torch.tanh(x @ w)
    return ((h @ big + b - y) ** 2).mean() + 0.1 * (w**4).sum()


def _leaves() -> list[torch.Tensor]:
    return [t.clone().requires_grad_(True) for t in _init()]


def _groups(params: list[torch.Tensor], **extra: object) -> list[dict]:
    roles = ["hidden", "output", "vector"]
    lrs = [0.01, 0.005, 0.02]
    return [
        {"params": [p], "lr": lr, "role": r, "name": r, **extra}
        for p, r, lr in zip(params, roles, lrs)
    ]


def _run(
    opt: torch.optim.Optimizer,
    params: list[torch.Tensor],
    before_step: Callable[[int], None] | None = None,
) -> list[list[torch.Tensor]]:
    """Run STEPS steps; return the displacements after each step."""
    start = [p.detach().clone() for p in params]
    out = []
    for t in range(STEPS):
        opt.zero_grad(set_to_none=True)
        if before_step is not None:
            before_step(t)
        _loss(params, t).backward()
        opt.step()
        out.append([p.detach() - s for p, s in zip(params, start)])
    return out


def _assert_parity(
    ours: list[list[torch.Tensor]], ref: list[list[torch.Tensor]], tol: float = TOL
) -> float:
    worst = 0.0
    for t, (a_step, b_step) in enumerate(zip(ours, ref)):
        for i, (a, b) in enumerate(zip(a_step, b_step)):
            scale = b.abs().max().item()
            assert scale > 0, f"reference did not move param {i} at step {t}"
            err = (a - b).abs().max().item() / scale
            worst = max(worst, err)
            assert err <= tol, f"step {t} param {i}: relative error {err:.3g} > {tol}"
    return worst


@pytest.mark.parametrize("a,b", [(1.27, 1.0), (1.0, 1.0), (1.27, 2.0)])
def test_adam_atan2_matches_lucidrains(a: float, b: float) -> None:
    betas, wd = (0.9, 0.99), 0.1
    ours_p = _leaves()
    ours = build_optimizer("adam_atan2", _groups(ours_p), betas=betas, a=a, b=b, weight_decay=wd)
    ref_p = _leaves()
    ref = RefAdamAtan2(
        [{"params": g["params"], "lr": g["lr"]} for g in _groups(ref_p)],
        lr=1e-3, betas=betas, weight_decay=wd, a=a, b=b,
    )  # fmt: skip
    _assert_parity(_run(ours, ours_p), _run(ref, ref_p))


def test_adam_ps_matches_formula() -> None:
    betas, eps, floor, wd = (0.9, 0.95), 1e-8, 1.5, 0.05
    ours_p = _leaves()
    ours = build_optimizer(
        "adam_ps", _groups(ours_p), betas=betas, eps=eps, floor=floor, weight_decay=wd
    )
    # written-out formula
    ref_p = _leaves()
    lrs = [g["lr"] for g in _groups(ref_p)]
    ms = [torch.zeros_like(p) for p in ref_p]
    vs = [torch.zeros_like(p) for p in ref_p]
    start = [p.detach().clone() for p in ref_p]
    ref = []
    for t in range(STEPS):
        for p in ref_p:
            p.grad = None
        _loss(ref_p, t).backward()
        with torch.no_grad():
            for p, m, v, lr in zip(ref_p, ms, vs, lrs):
                g = p.grad
                m.mul_(betas[0]).add_((1 - betas[0]) * g)
                v.mul_(betas[1]).add_((1 - betas[1]) * g * g)
                m_hat = m / (1 - betas[0] ** (t + 1))
                v_hat = v / (1 - betas[1] ** (t + 1))
                scale = max(floor, p.pow(2).mean().sqrt().item())
                p.mul_(1 - lr * wd)
                p.sub_(lr * scale * m_hat / (v_hat.sqrt() + eps))
        ref.append([p.detach() - s for p, s in zip(ref_p, start)])
    _assert_parity(_run(ours, ours_p), ref)
    # the floor is active for the first matrix and inactive for the big one
    assert _init()[0].pow(2).mean().sqrt() < floor < _init()[1].pow(2).mean().sqrt()


def test_adopt_matches_pytorch_optimizer() -> None:
    betas, eps = (0.9, 0.9999), 1e-6
    ours_p = _leaves()
    ours = build_optimizer("adopt", _groups(ours_p), betas=betas, eps=eps)
    ref_p = _leaves()
    # pytorch_optimizer counts calls from 1 (the init call is step 1); the paper and the
    # official code clip the t-th update at t^0.25, i.e. (call count - 1)^0.25.
    ref = RefADOPT(
        [{"params": g["params"], "lr": g["lr"]} for g in _groups(ref_p)],
        betas=betas, eps=eps, clip_lambda=lambda s: (s - 1) ** 0.25,
    )  # fmt: skip
    ours_d, ref_d = _run(ours, ours_p), _run(ref, ref_p)
    assert all(d.abs().max() == 0 for d in ours_d[0]), "ADOPT's first step must not update"
    _assert_parity(ours_d[1:], ref_d[1:])


def test_lamb_matches_pytorch_optimizer() -> None:
    betas, eps, wd = (0.9, 0.999), 1e-6, 0.01
    ours_p = _leaves()
    ours = build_optimizer(
        "lamb", _groups(ours_p), betas=betas, eps=eps, weight_decay=wd, bias_correction=False
    )
    ref_p = _leaves()
    # pytorch_optimizer's Lamb: no bias correction of m, v; clamp 10; wd inside r with
    # weight_decouple=False; by default it divides the final step by 1 - beta1^t, which
    # adam_debias=True turns off. Its trust ratio is ||w|| / (||r|| + eps): that eps is the
    # only remaining difference (relative size eps / ||r||).
    ref = RefLamb(
        [{"params": g["params"], "lr": g["lr"]} for g in _groups(ref_p)],
        betas=betas, eps=eps, weight_decay=wd, weight_decouple=False, adam_debias=True,
    )  # fmt: skip
    _assert_parity(_run(ours, ours_p), _run(ref, ref_p))
    assert ours.state[ours_p[1]]["trust_ratio"] > 0


def _tiny_lm() -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(7, 4, generator=g, dtype=DT)
    head = torch.randn(4, 7, generator=g, dtype=DT)
    bias = torch.zeros(7, dtype=DT)
    tokens = torch.randint(0, 7, (3, 5), generator=g)

    def logits(ps: list[torch.Tensor]) -> torch.Tensor:
        return torch.tanh(ps[0][tokens]) @ ps[1] + ps[2]

    return [emb, head, bias], logits


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_sophia_h_matches_pytorch_optimizer() -> None:
    """Sophia-H vs pytorch_optimizer SophiaH, end to end with the same Rademacher draws.

    Our update ``sign(m) min(|m| / max(rho h, eps), 1)`` times lr equals SophiaH's
    ``clamp(m / max(h, e), -p, p)`` times ``lr_ref`` with ``lr_ref = lr / rho``, ``p = rho``,
    ``e = eps / rho`` and decoupled decay ``wd_ref = wd * rho``. The curvature is refreshed at
    steps 0, k, 2k, ... in both (SophiaH: ``update_period=k``); both draw ``u`` with
    ``randint_like`` per parameter in order, so seeding the global RNG gives the same ``u``.
    """
    betas, rho, eps, lr, wd, k = (0.965, 0.99), 0.04, 1e-15, 0.01, 0.1, 3
    init, logits_of = _tiny_lm()
    targets = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(2))

    def ce(ps: list[torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits_of(ps).reshape(-1, 7), targets.reshape(-1))

    ours_p = [t.clone().requires_grad_(True) for t in init]
    ours = build_optimizer(
        "sophia",
        [{"params": ours_p, "lr": lr, "role": "hidden"}],
        variant="h", betas=betas, rho=rho, eps=eps, weight_decay=wd, curvature_interval=k,
    )  # fmt: skip
    ref_p = [t.clone().requires_grad_(True) for t in init]
    ref = RefSophiaH(
        ref_p, lr=lr / rho, betas=betas, p=rho, eps=eps / rho, weight_decay=wd * rho,
        update_period=k, hessian_distribution="rademacher",
    )  # fmt: skip
    for t in range(STEPS):
        ours.zero_grad(set_to_none=True)
        torch.manual_seed(1000 + t)
        if t % ours.curvature_interval == 0:
            ours.refresh_curvature(lambda: logits_of(ours_p), targets)
            assert all(p.grad is None for p in ours_p)
        ce(ours_p).backward()
        ours.step()

        ref.zero_grad(set_to_none=True)
        torch.manual_seed(1000 + t)
        ce(ref_p).backward(create_graph=t % k == 0)
        ref.step()
        for a, b, w0 in zip(ours_p, ref_p, init):
            h_ours, h_ref = ours.state[a]["hessian"], ref.state[b]["hessian_moment"]
            torch.testing.assert_close(h_ours, h_ref, rtol=TOL, atol=1e-12)
            err = (a - b).abs().max() / (b - w0).abs().max()
            assert err <= TOL, f"step {t}: relative error {err.item():.3g}"


def test_sophia_update_matches_formula_given_fixed_curvature() -> None:
    """Given a fixed curvature estimate, the step equals the documented formula."""
    betas, rho, eps, lr = (0.965, 0.99), 0.04, 1e-15, 0.01
    p = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=DT, requires_grad=True)
    opt = build_optimizer("sophia", [{"params": [p], "lr": lr}], betas=betas, rho=rho, eps=eps)
    h_est = torch.tensor([4.0, 0.01, -1.0, 0.0], dtype=DT)
    opt.update_curvature([h_est])
    p.grad = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=DT)
    before = p.detach().clone()
    opt.step()
    m = (1 - betas[0]) * p.grad
    h = (1 - betas[1]) * h_est
    expected = before - lr * torch.sign(m) * torch.clamp(
        m.abs() / torch.clamp(rho * h, min=eps), max=1.0
    )
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-15)


def _shampoo_formula(
    grads_of: Callable[[list[torch.Tensor], int], list[torch.Tensor]],
    params: list[torch.Tensor],
    lrs: list[float],
    eps: float,
    relative: bool,
    freq: int,
    block: int,
    momentum: float = 0.0,
    decay: float | None = None,
) -> list[list[torch.Tensor]]:
    """Blocked Shampoo written out with numpy-style loops and torch.linalg.eigh: roots at
    steps 1..freq, then every freq steps; eps times the largest eigenvalue if relative;
    statistics summed, or an EMA with ``decay`` (bias-corrected); the gradient, or its
    bias-corrected EMA with ``momentum``, preconditioned."""
    t_now = [0]

    def root(mat: torch.Tensor) -> torch.Tensor:
        lam, q = torch.linalg.eigh(mat)
        lam = lam.clamp(min=0)
        if decay is not None:
            lam = lam / (1 - decay ** t_now[0])
        e = eps * lam.max() if relative else eps
        return q @ torch.diag((lam + e) ** -0.25) @ q.T

    def cuts(n: int) -> list[tuple[int, int]]:
        k = math.ceil(n / block)
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
        ends = [sum(sizes[: i + 1]) for i in range(k)]
        return [(e - s, e) for s, e in zip(sizes, ends)]

    keep, add = (1.0, 1.0) if decay is None else (decay, 1 - decay)
    stats: dict[tuple[int, int, int], list[torch.Tensor]] = {}
    acc = [torch.zeros_like(p) for p in params]
    mom = [torch.zeros_like(p) for p in params]
    start = [p.clone() for p in params]
    out = []
    for t in range(STEPS):
        t_now[0] = t + 1
        grads = grads_of(params, t)
        for i, (p, g, lr) in enumerate(zip(params, grads, lrs)):
            mom[i] = momentum * mom[i] + (1 - momentum) * g
            direction = mom[i] / (1 - momentum ** (t + 1))  # = g without momentum
            if g.ndim == 1:
                acc[i] = keep * acc[i] + add * g * g
                a = acc[i] / (1 - decay ** (t + 1)) if decay is not None else acc[i]
                p -= lr * direction / torch.sqrt(a + (eps * a.max() if relative else eps))
                continue
            upd = torch.zeros_like(g)
            for bi, (r0, r1) in enumerate(cuts(g.shape[0])):
                for bj, (c0, c1) in enumerate(cuts(g.shape[1])):
                    gb = g[r0:r1, c0:c1]
                    s = stats.setdefault((i, bi, bj), [0 * gb @ gb.T, 0 * gb.T @ gb, None, None])
                    s[0] = keep * s[0] + add * gb @ gb.T
                    s[1] = keep * s[1] + add * gb.T @ gb
                    if t + 1 <= freq or (t + 1) % freq == 0:
                        s[2], s[3] = root(s[0]), root(s[1])
                    upd[r0:r1, c0:c1] = s[2] @ direction[r0:r1, c0:c1] @ s[3]
            p -= lr * upd
        out.append([p - s for p, s in zip(params, start)])
    return out


def _grads_of(params: list[torch.Tensor], t: int) -> list[torch.Tensor]:
    leaves = [p.clone().requires_grad_(True) for p in params]
    return list(torch.autograd.grad(_loss(leaves, t), leaves))


@pytest.mark.parametrize(
    "relative,eps,momentum,decay",
    [(True, 1e-3, 0.0, None), (False, 1e-4, 0.0, None), (True, 1e-3, 0.9, 0.95),
     (False, 1e-4, 0.5, None), (True, 1e-3, 0.0, 0.9)],
)  # fmt: skip
def test_shampoo_matches_eigh_formula_with_blocks(
    relative: bool, eps: float, momentum: float, decay: float | None
) -> None:
    """Blocks of unequal sizes (5 rows -> 3 + 2), stale roots between refreshes; eps large
    enough to change the steps, so its form (relative or absolute) is checked too; momentum
    and EMA statistics (bias-corrected) as options."""
    freq, block = 3, 3
    ours_p = _leaves()
    ours = build_optimizer(
        "shampoo", _groups(ours_p),
        eps=eps, eps_relative=relative, precondition_frequency=freq, max_preconditioner_dim=block,
        normalize=None,  # the plain formula: stale roots unclipped
        momentum=momentum, statistics_decay=decay,
    )  # fmt: skip
    ref = _shampoo_formula(
        _grads_of, [t.clone() for t in _init()], [g["lr"] for g in _groups(_init())],
        eps, relative, freq, block, momentum, decay,
    )  # fmt: skip
    _assert_parity(_run(ours, ours_p), ref)
    st = ours.state[ours_p[0]]
    assert sum(v.shape[0] for k, v in st.items() if k[0] == "L" and "root" not in k) == 4


def test_shampoo_matches_pytorch_optimizer_on_matrices() -> None:
    """The matching configuration: absolute eps, no grafting, roots every step, one block,
    2-D params only.

    pytorch_optimizer's Shampoo starts its statistics at ``eps * I`` (= our eps added to the
    eigenvalues) and recomputes roots when ``step % k == 0`` (a zero step before that), so only
    ``k = 1`` agrees; it preconditions vectors with a full matrix (no agreement for 1-D).
    """
    eps = 1e-6
    ours_p = _leaves()[:2]
    ours = build_optimizer(
        "shampoo", _groups(ours_p)[:2], eps=eps, eps_relative=False, precondition_frequency=1
    )
    ref_p = _leaves()[:2]
    ref = RefShampoo(
        [{"params": g["params"], "lr": g["lr"]} for g in _groups(ref_p)[:2]],
        momentum=0.0, preconditioning_compute_steps=1, matrix_eps=eps,
    )  # fmt: skip
    b = _init()[2]

    def run(opt: torch.optim.Optimizer, ps: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        start = [p.detach().clone() for p in ps]
        out = []
        for t in range(STEPS):
            grads = _grads_of([*[p.detach() for p in ps], b], t)[:2]
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
            out.append([p.detach() - s for p, s in zip(ps, start)])
        return out

    _assert_parity(run(ours, ours_p), run(ref, ref_p))


@pytest.mark.parametrize("ns_dtype", ["bfloat16", "float32", "auto"])
def test_muon_matches_torch_muon_and_adamw(ns_dtype: str, monkeypatch) -> None:
    """Bit-identical: the composite delegates to torch's Muon/AdamW (whose Newton-Schulz runs
    in bfloat16 even for float64 params), so no tolerance is needed. ns_dtype "float32" (and
    "auto" on CPU) is torch's Muon with only the iteration's dtype changed: the reference is
    torch's Muon running `newton_schulz` in float32, which in bfloat16 is torch's own."""
    import torch.optim._muon as tm

    from hptransfer.optim.muon import newton_schulz

    g = torch.randn(24, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch_ns = tm._zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    assert torch.equal(newton_schulz(g, 5, 1e-7, torch.bfloat16), torch_ns)
    if ns_dtype != "bfloat16":
        monkeypatch.setattr(
            tm,
            "_zeropower_via_newtonschulz",
            lambda x, _, n, e: newton_schulz(x, n, e, torch.float32),
        )
    lr_m, lr_a, wd = 0.02, 0.003, 0.1
    ours_p = _leaves()
    groups = _groups(ours_p)
    groups[0]["lr"], groups[1]["lr"], groups[2]["lr"] = lr_m, lr_a, lr_a
    ours = build_optimizer(
        "muon", groups, weight_decay=wd, eps=1e-8, betas=(0.9, 0.95), ns_dtype=ns_dtype
    )
    ref_p = _leaves()
    muon = torch.optim.Muon([ref_p[0]], lr=lr_m, weight_decay=wd, adjust_lr_fn="original")
    adamw = torch.optim.AdamW(ref_p[1:], lr=lr_a, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)

    class Both(torch.optim.Optimizer):
        def __init__(self) -> None:
            self.param_groups = muon.param_groups + adamw.param_groups

        def zero_grad(self, set_to_none: bool = True) -> None:
            muon.zero_grad(set_to_none)
            adamw.zero_grad(set_to_none)

        def step(self, closure: None = None) -> None:  # type: ignore[override]
            muon.step()
            adamw.step()

    ours_d, ref_d = _run(ours, ours_p), _run(Both(), ref_p)
    for a_step, b_step in zip(ours_d, ref_d):
        for a, b in zip(a_step, b_step):
            assert torch.equal(a, b)
    assert "momentum_buffer" in ours.state[ours_p[0]]
    assert "exp_avg_sq" in ours.state[ours_p[1]]
