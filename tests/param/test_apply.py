import math

import pytest
import torch
from torch import nn

from hptransfer.config import RunConfig
from hptransfer.errors import ConfigError
from hptransfer.models import build_model
from hptransfer.optim import build_optimizer
from hptransfer.param.apply import parameterize
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import make_rule
from hptransfer.train import train


def nanodo(width):
    return build_model("nanodo", width=width, depth=1, seq_len=32, head_dim=16)


def _setup(width, base=64, param="mup", optimizer="adam", seed=0, **kw):
    torch.manual_seed(seed)
    model = nanodo(width)
    roles = roles_from_factory(nanodo, width, base)
    rule = make_rule(param, optimizer, "full")
    p = parameterize(
        model, roles, rule, lr=1e-2, generator=torch.Generator().manual_seed(seed), **kw
    )
    return model, p


# hand-computed init std for mup, relative anchor, base width 64:
#   input  1 * m^-1/2;  hidden  fan_in0^-1/2 * m^-1/2 = fan_in^-1/2;  output the same
EXPECTED_STD = {
    64: {
        "tok_embed.weight": 1.0,
        "blocks.0.attn.q.weight": 1 / 8,
        "blocks.0.mlp.fc_out.weight": 1 / 16,
        "head.weight": 1 / 8,
    },
    512: {
        "tok_embed.weight": 8**-0.5,
        "blocks.0.attn.q.weight": 512**-0.5,
        "blocks.0.mlp.fc_out.weight": 2048**-0.5,
        "head.weight": 512**-0.5,
    },
}
EXPECTED_MULT = {
    64: {"tok_embed.weight": 1.0, "head.weight": 1.0},
    512: {"tok_embed.weight": 8**0.5, "head.weight": 8**-0.5},
}


@pytest.mark.parametrize("width", [64, 512])
def test_measured_init_std_matches_the_rule(width):
    model, p = _setup(width)
    params = dict(model.named_parameters())
    for name, std in EXPECTED_STD[width].items():
        assert p.table[name].init_std == pytest.approx(std, rel=1e-12)
        assert params[name].std().item() == pytest.approx(std, rel=0.04), name
    for name, mult in EXPECTED_MULT[width].items():
        assert p.table[name].multiplier == pytest.approx(mult, rel=1e-12)
    assert torch.equal(params["blocks.0.ln1.weight"], torch.ones(width))  # vectors keep init


def test_absolute_anchor_uses_n_itself():
    _, p = _setup(256, anchor="absolute")
    assert p.table["tok_embed.weight"].init_std == pytest.approx(256**-0.5)
    assert p.table["tok_embed.weight"].multiplier == pytest.approx(256**0.5)
    assert p.table["head.weight"].multiplier == pytest.approx(256**-0.5)
    assert p.table["blocks.0.mlp.fc_out.weight"].init_std == pytest.approx(1024**-0.5)


def test_forward_multipliers_are_applied_without_editing_the_model():
    """mup at width 256, base 64 (m = 4): the hooks scale the embedding's output by exactly
    m^1/2 = 2 and the head's by m^-1/2 = 1/2; `remove` takes them off again."""
    model, p = _setup(256)
    expected = {"tok_embed": 2.0, "head": 0.5}
    for name, mult in expected.items():
        assert p.table[f"{name}.weight"].multiplier == mult
    x = torch.randint(0, 256, (2, 8))

    def outputs():
        seen = {}
        probes = [
            getattr(model, name).register_forward_hook(
                lambda mod, args, out, name=name: seen.__setitem__(name, out)
            )
            for name in ("tok_embed", "ln_f", "head")
        ]
        model(x)
        for h in probes:
            h.remove()
        raw = {
            "tok_embed": nn.functional.embedding(x, model.tok_embed.weight),
            "head": nn.functional.linear(seen["ln_f"], model.head.weight),
        }
        return {name: (seen[name], raw[name]) for name in raw}

    for name, (out, raw) in outputs().items():  # powers of two: the scaling is exact
        torch.testing.assert_close(out, expected[name] * raw, rtol=1e-6, atol=0)
    p.remove()
    for out, raw in outputs().values():
        torch.testing.assert_close(out, raw, rtol=1e-6, atol=0)


def test_mup_at_base_width_is_bitwise_sp():
    """Relative anchor: at width_mult 1 every parameterization is SP, bit for bit."""
    cfg = RunConfig().replace(
        **{
            "model.width": 64,
            "model.depth": 1,
            "model.head_dim": 16,
            "param.base_width": 64,
            "train.steps": 3,
            "train.batch_size": 4,
            "train.seq_len": 32,
            "train.eval_every": 3,
            "train.eval_batches": 1,
            "optimizer.lr": 1e-2,
        }
    )
    m_mup, _ = _setup(64, base=64, param="mup")
    m_sp, _ = _setup(64, base=64, param="sp")
    for (n1, a), (n2, b) in zip(m_mup.named_parameters(), m_sp.named_parameters()):
        assert n1 == n2 and torch.equal(a, b), n1
    mup = train(cfg.replace(**{"param.name": "mup"}))
    sp = train(cfg.replace(**{"param.name": "sp"}))
    assert mup["losses"] == sp["losses"] and len(mup["losses"]) == 3


def _losses(form, optimizer, lr, steps=20):
    cfg = RunConfig().replace(
        **{
            "model.width": 128,
            "model.depth": 1,
            "model.head_dim": 16,
            "param.base_width": 32,
            "param.name": "mup",
            "param.form": form,
            "optimizer.name": optimizer,
            "optimizer.lr": lr,
            "train.steps": steps,
            "train.batch_size": 4,
            "train.seq_len": 32,
            "train.dtype": "float64",
            "train.eval_every": steps,
            "train.eval_batches": 1,
            "train.warmup_steps": 0,
            "train.schedule": "constant",
        }
    )
    return train(cfg)["losses"]


def test_multiplier_and_folded_forms_train_identically_under_sgd():
    a, b = _losses("multiplier", "sgd", 0.05), _losses("folded", "sgd", 0.05)
    assert len(a) == len(b) == 20
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
    assert a[-1] < a[0] - 0.1  # it trained


def test_multiplier_and_folded_forms_agree_under_adam_with_rescaled_eps():
    a, b = _losses("multiplier", "adam", 3e-3), _losses("folded", "adam", 3e-3)
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_groups_carry_the_rules_lr_and_eps(optimizer):
    width, base, beta = 256, 64, 1e-2
    model, p = _setup(width, base, optimizer=optimizer, eps=1e-8, eps_mode="per_layer")
    opt = build_optimizer(optimizer, p.param_groups)
    rule = make_rule("mup", optimizer, "full")
    m = width / base
    by_role = {g["role"]: g for g in opt.param_groups}
    assert set(by_role) == {"input", "hidden", "output", "vector"}
    for role, g in by_role.items():
        r = rule.roles[role]
        assert g["lr"] == pytest.approx(beta * m ** -float(r.c), rel=1e-12)
        if optimizer != "sgd":
            assert g["eps"] == pytest.approx(1e-8 * m ** -float(r.g), rel=1e-12)
    if optimizer == "adam":  # the hand values for mup + adam, full alignment
        assert by_role["hidden"]["lr"] == pytest.approx(beta / 4)
        assert by_role["input"]["lr"] == pytest.approx(beta / 2)
        assert by_role["hidden"]["eps"] == pytest.approx(1e-8 / 4)


def test_groups_work_with_torch_schedulers():
    model, p = _setup(128)
    opt = torch.optim.AdamW(p.param_groups)
    before = [g["lr"] for g in opt.param_groups]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [b * 0.5 for b in before]


class WithBias(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.inp = nn.Linear(8, w)
        self.hid = nn.Linear(w, w)
        self.out = nn.Linear(w, 3)

    def forward(self, x):
        return self.out(torch.relu(self.hid(torch.relu(self.inp(x)))))


def test_multiplier_on_a_linear_with_bias_scales_the_weight_only():
    torch.manual_seed(0)
    model = WithBias(64)
    roles = roles_from_factory(WithBias, 64, 16)
    p = parameterize(model, roles, make_rule("mfp", "adam"), lr=1e-3)
    x = torch.randn(5, 8)
    h = torch.relu(model.inp(x))
    mult = p.table["hid.weight"].multiplier
    assert mult == pytest.approx(0.5)
    expected = h @ (mult * model.hid.weight).T + model.hid.bias
    assert torch.allclose(model.hid(h), expected, atol=1e-6)


class Custom(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(w, 8))

    def forward(self, x):
        return x @ self.w.T


def test_unknown_module_needs_an_override_then_takes_either_form():
    with pytest.raises(ConfigError, match=r'^w: role unknown: .*param.overrides, e.g. "w" ='):
        roles_from_factory(Custom, 64, 16)
    roles = roles_from_factory(Custom, 64, 16, overrides={"w": "input"})
    rule = make_rule("mup", "adam")
    model = Custom(64)
    p = parameterize(model, roles, rule, lr=1e-3)
    assert p.table["w"].multiplier == 2.0  # mup input: m^1/2, read by the owner's forward
    x = torch.randn(3, 8)
    torch.testing.assert_close(model(x), x @ (2.0 * model.w).T, rtol=0, atol=0)
    p = parameterize(Custom(64), roles, rule, lr=1e-3, form="folded")
    assert p.table["w"].multiplier == 1.0
    assert math.isclose(p.table["w"].init_std, 1.0)  # mup input folded: (0, 0)
