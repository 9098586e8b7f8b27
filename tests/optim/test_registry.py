"""The optimizer registry: the rule's printed LR is the step that runs, for every optimizer; and
a new optimizer is one spec plus one registration (a toy signSGD gets rules, config validation,
the CLI's choice, diagnostics and the contract suite)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from hptransfer.cli import main
from hptransfer.config import OptimizerConfig, RunConfig
from hptransfer.errors import ConfigError
from hptransfer.models import build_model
from hptransfer.optim import OPTIMIZERS, build_optimizer, registry
from hptransfer.optim.decay import apply_decay
from hptransfer.optim.diagnostics import optimizer_diagnostics
from hptransfer.optim.registry import OptimizerSpec, family
from hptransfer.param.apply import compute_specs, parameterize
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import make_rule

torch.set_num_threads(1)
LR = 1e-2
WIDTH, BASE = 64, 32  # width_mult 2: every per-role factor differs from 1


def nanodo(width: int) -> torch.nn.Module:
    return build_model("nanodo", width=width, depth=1, seq_len=16, head_dim=16, vocab_size=96)


def _one_step(name: str, knobs: dict[str, Any], form: str) -> tuple[dict, dict, dict, dict]:
    """Parameterize nanodo at WIDTH (muP + ``name``'s rule), give every parameter a gradient
    of random signs (entries +-1) and take one step (two for ADOPT, whose first call only
    records v). Returns (specs, w0, grads, steps) keyed by parameter name."""
    torch.manual_seed(0)
    model = nanodo(WIDTH).double()
    roles = roles_from_factory(nanodo, WIDTH, BASE)
    rule = make_rule("mup", name, options=knobs)
    gen = torch.Generator().manual_seed(0)
    par = parameterize(model, roles, rule, lr=LR, form=form, generator=gen)
    opt = build_optimizer(name, par.param_groups, **knobs)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    grads = {
        n: torch.randint(0, 2, p.shape, generator=gen).double() * 2 - 1 for n, p in params.items()
    }
    w0 = {n: p.detach().clone() for n, p in params.items()}
    for _ in range(2 if name == "adopt" else 1):
        w_before = {n: p.detach().clone() for n, p in params.items()}
        for n, p in params.items():
            p.grad = grads[n].clone()
        opt.step()
    steps = {n: p.detach() - w_before[n] for n, p in params.items()}
    specs = compute_specs(roles, rule, form=form)
    assert set(specs) == set(params)
    return specs, w0, grads, steps


def _rms(t: Tensor) -> float:
    return t.pow(2).mean().sqrt().item()


def _newton_schulz(g: Tensor, momentum: float = 0.95) -> Tensor:
    """Muon's direction on the first step: Nesterov momentum of g, orthogonalized (on CPU, by
    default, in float32: see optim.muon.NS_DTYPES)."""
    from hptransfer.optim.muon import newton_schulz

    update = g.lerp((1 - momentum) * g, momentum)
    return newton_schulz(update, 5, 1e-7, torch.float32).to(g.dtype)


# For each optimizer: the step it must take, given the printed lr (= LR * lr_factor) and eps of
# the parameter, its weights w0 and its gradient g (entries +-1, so |g| = 1 elementwise).
def expected_step(name: str, lr: float, eps: float | None, w0: Tensor, g: Tensor, role: str):
    if name == "sgd":  # first step of heavy-ball momentum: the buffer is g itself
        return -lr * g
    if name in ("adam", "adamw"):  # m_hat = g, v_hat = g^2: g / (|g| + eps)
        return -lr * g / (1 + eps)
    if name == "adam_ps":  # Adam's step times max(floor, rms(w0)) of the tensor
        return -lr * max(1e-3, _rms(w0)) * g / (1 + eps)
    if name == "adafactor":  # relative step min(lr, 1) * max(eps2, rms(w0)); v_hat = g^2 = 1
        return -lr * max(1e-3, _rms(w0)) * g
    if name == "adam_atan2":  # a * atan2(m_hat, b sqrt(v_hat)) = 1.27 * atan(1) * sign(g)
        return -lr * 1.27 * math.atan(1.0) * g
    if name == "adopt":  # second call: m = (1 - beta1) * clip(g / sqrt(v), 1) = 0.1 g
        return -lr * 0.1 * g
    if name == "lamb":  # trust ratio min(||w0||, 10) / ||r||, r = g / (1 + eps): Frobenius size
        phi = min(w0.norm().item(), 10.0)
        return -lr * (phi * g / g.norm() if phi > 0 else g / (1 + eps))
    if name == "sophia":  # no curvature yet: every coordinate clipped, lr * sign(m)
        return -lr * g
    if name == "muon":
        if role == "hidden" and g.ndim == 2:  # lr times torch's orthogonalized direction
            return -lr * _newton_schulz(g)
        return -lr * g / (1 + eps)  # its AdamW part
    raise AssertionError(name)


def shampoo_check(lr: float, step: Tensor, g: Tensor) -> None:
    """Matrices, fresh roots: L^-1/4 G R^-1/4 = U V^T for G = U S V^T, whose singular values
    are all 1 (less the relative eps 1e-6: s / sqrt(s^2 + 1e-6 s_max^2)); so the step's largest
    singular value is lr, up to 1e-6. Vectors: Adagrad, g / sqrt(g^2 + 1e-6 max(g^2))."""
    if step.ndim < 2:
        torch.testing.assert_close(step, -lr * g / math.sqrt(1 + 1e-6), rtol=1e-9, atol=1e-15)
        return
    top = torch.linalg.matrix_norm(step.reshape(step.shape[0], -1), ord=2).item()
    assert top == pytest.approx(lr, rel=1e-5)


KNOBS = {  # no blocks (one preconditioner per tensor), so each tensor's step is U V^T
    "shampoo": {"max_preconditioner_dim": 1024},
}


@pytest.mark.parametrize("form", ["multiplier", "folded"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_printed_lr_factor_is_the_step_taken(name: str, form: str) -> None:
    """For every optimizer and every nanodo parameter, LR * (the lr_factor `hptransfer rules
    --model` prints) is the step size measured on one step, and the printed eps is the one
    used (Adam-type steps g / (|g| + eps) with |g| = 1)."""
    specs, w0, grads, steps = _one_step(name, KNOBS.get(name, {}), form)
    factors = set()
    for pname, s in specs.items():
        lr = LR * s.lr_factor
        factors.add(round(s.lr_factor, 6))
        if name == "shampoo":
            shampoo_check(lr, steps[pname], grads[pname])
            continue
        want = expected_step(name, lr, s.eps, w0[pname], grads[pname], s.role)
        torch.testing.assert_close(steps[pname], want, rtol=1e-9, atol=1e-15, msg=pname)
    assert len(factors) > 1 or (name, form) == ("shampoo", "multiplier")  # non-trivial factors


def test_muon_rules_print_the_factor_and_eps_that_run(capsys: pytest.CaptureFixture) -> None:
    """Muon's sqrt(fan_out / fan_in) = 2 on mlp.fc_in and its Newton-Schulz eps 1e-7 are in the
    table; its coupled weight decay is divided by the factor (torch decays with the group LR)."""
    args = ["rules", "--optimizer", "muon", "--model", "nanodo", "--width", "256"]
    assert main([*args, "--base-width", "64"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    # columns 6, 7: lr_factor, eps (the evidence of the role follows)
    assert rows["blocks.0.mlp.fc_in.weight"][6:8] == ["2", "1e-07"]
    assert rows["blocks.0.mlp.fc_out.weight"][6:8] == ["1", "1e-07"]
    assert rows["blocks.0.attn.q.weight"][6:8] == ["1", "1e-07"]
    assert rows["ln_f.weight"][7] == "1e-08"  # AdamW part
    roles = roles_from_factory(nanodo, WIDTH, BASE)
    specs = compute_specs(roles, make_rule("mup", "muon"), weight_decay=0.1)
    fc_in = specs["blocks.0.mlp.fc_in.weight"]
    assert fc_in.lr_factor == 2.0 and fc_in.weight_decay == pytest.approx(0.05)
    rms = compute_specs(
        roles, make_rule("mup", "muon", options={"adjust_lr_fn": "match_rms_adamw"})
    )
    # 0.2 * sqrt(max(fan_out, fan_in)) = 0.2 * 16, times the rule's m^-1/2 = 2^-1/2
    assert rms["blocks.0.mlp.fc_in.weight"].lr_factor == pytest.approx(3.2 / 2**0.5)


def test_muon_steps_as_before_the_factor_moved() -> None:
    """The factor moved from inside torch's Muon into the LR: the weights after three steps
    (with coupled weight decay) equal plain torch.optim.Muon's, adjust_lr_fn "original", at the
    LR without the factor."""
    torch.manual_seed(0)
    model = nanodo(WIDTH).double()
    roles = roles_from_factory(nanodo, WIDTH, BASE)
    rule = make_rule("mup", "muon")
    par = parameterize(model, roles, rule, lr=LR, weight_decay=0.1)
    opt = build_optimizer("muon", par.param_groups, weight_decay=0.1, ns_dtype="bfloat16")
    w = model.blocks[0].mlp.fc_in.weight
    ref = torch.nn.Parameter(w.detach().clone())
    base_lr = LR * make_rule("mup", "muon").roles["hidden"].gamma  # hidden c = 0
    torch_muon = torch.optim.Muon([ref], lr=base_lr, weight_decay=0.1, adjust_lr_fn="original")
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        g = torch.randn(w.shape, generator=gen, dtype=w.dtype)
        for p in model.parameters():
            p.grad = g if p is w else torch.zeros_like(p)
        ref.grad = g.clone()
        opt.step()
        torch_muon.step()
    torch.testing.assert_close(w.detach(), ref.detach(), rtol=1e-12, atol=1e-15)


def test_unknown_names_raise_config_errors_naming_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown optimizer 'adamx'; valid: sgd, adam"):
        registry.get("adamx")
    with pytest.raises(ConfigError, match="optimizer.name: unknown optimizer 'adamx'"):
        RunConfig(optimizer=OptimizerConfig(name="adamx")).validate()
    with pytest.raises(
        ConfigError, match="unknown knob.*clip.*valid: betas, bias_correction, clamp"
    ):
        build_optimizer("lamb", [{"params": [torch.zeros(2)], "lr": 0.1}], clip=1.0)


# ---- a toy optimizer, registered for one test: signSGD, w -= lr * sign(g) ------------------


class SignSGD(torch.optim.Optimizer):
    """signSGD with the package's weight decay (apply_decay) and one diagnostic."""

    def __init__(self, params: Any, lr: float = 1e-3, weight_decay: float = 0.0, wd_mode="coupled"):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, wd_mode=wd_mode))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            apply_decay(group, params)
            for p in params:
                self.state[p]["last_sign"] = p.grad.sign()
                p.add_(p.grad.sign(), alpha=-group["lr"])
        return loss


def zero_fraction(group: Any, st: Any) -> tuple[str, Tensor]:
    return "zero_sign", (st["last_sign"] == 0).float().mean()


TOY = OptimizerSpec(
    name="signsgd",
    factory=lambda groups, cfg: SignSGD(groups, **cfg),
    knobs={},
    regime=family("adam"),  # an elementwise-normalized step: [E]'s Adam family
    diagnostics=(zero_fraction,),
    fsdp=False,
)


def test_a_toy_optimizer_needs_one_spec_and_one_registration(
    capsys: pytest.CaptureFixture,
) -> None:
    from test_contract import CHECKS, Entry

    assert "signsgd" not in OPTIMIZERS
    with registry.registered(TOY):
        assert "signsgd" in OPTIMIZERS
        # the rule: [E]'s Adam exponents, no epsilon
        rule = make_rule("mup", "signsgd")
        assert rule.roles == make_rule("mup", "adam").roles
        # config validation
        RunConfig(optimizer=OptimizerConfig(name="signsgd")).validate()
        with pytest.raises(ConfigError, match="unknown optimizer 'signsdg'.*signsgd"):
            RunConfig(optimizer=OptimizerConfig(name="signsdg")).validate()
        # the CLI's choice (and its per-parameter table)
        args = ["rules", "--optimizer", "signsgd", "--model", "mlp", "--width", "64"]
        assert main([*args, "--base-width", "32"]) == 0
        assert "lr_factor" in capsys.readouterr().out
        # diagnostics
        p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        opt = build_optimizer("signsgd", [{"params": [p], "lr": 0.1}])
        p.grad = torch.tensor([1.0, 0.0, -2.0, 0.0])
        opt.step()
        assert optimizer_diagnostics("signsgd", opt, {p: "p"}) == {"zero_sign/p": 0.5}
        torch.testing.assert_close(p.detach(), torch.tensor([0.9, 2.0, 3.1, 4.0]))
        # the contract suite
        for check in CHECKS:
            check(Entry("signsgd", has_eps=False))
    assert "signsgd" not in OPTIMIZERS
    with pytest.raises(ConfigError):
        RunConfig(optimizer=OptimizerConfig(name="signsgd")).validate()
