"""Init that respects the model (hptransfer.param.init): the model anchor keeps the model's own
init per parameter and takes only the width dependence from the rule; biases start at a
width-independent size; init constants by name pattern."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hptransfer.errors import ConfigError
from hptransfer.models import build_model
from hptransfer.param.apply import parameterize
from hptransfer.param.init import measure_init, rms
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import make_rule


class Custom(nn.Module):
    """A dense 768-feature input layer with its own 0.02 init, a conv stem, a hidden layer with
    a bias, a zero-initialized readout and an A_log-like vector of fixed values."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3, w, 3, padding=1)
        self.inp = nn.Linear(768, w)
        nn.init.normal_(self.inp.weight, std=0.02)
        self.mid = nn.Linear(w, w)
        self.out = nn.Linear(w, 5, bias=False)
        nn.init.zeros_(self.out.weight)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, w + 1, dtype=torch.float32)))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.stem(s).mean(-1) - self.A_log.exp() * 1e-3
        return self.out(torch.relu(self.mid(torch.relu(h))))


def _custom(width: int, base: int, seed: int = 0, **kw: object):
    torch.manual_seed(seed)
    model = Custom(width)
    own = {n: p.detach().clone() for n, p in model.named_parameters()}
    roles = roles_from_factory(Custom, width, base, overrides={"A_log": "vector"})
    par = parameterize(model, roles, make_rule("mup", "adam"), lr=1e-2, anchor="model", **kw)
    return model, own, par


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 768, generator=g), torch.randn(4, 3, 8, generator=g)


def test_model_anchor_at_base_width_is_the_models_own_init_bitwise() -> None:
    model, own, par = _custom(64, 64)
    for name, p in model.named_parameters():
        assert torch.equal(p, own[name]), name
    torch.manual_seed(0)
    plain = Custom(64)
    nn.init.normal_(plain.out.weight)  # a readout that computes something
    model.out.weight.data.copy_(plain.out.weight)
    assert torch.equal(model(*_inputs()), plain(*_inputs()))
    assert par.table["mid.weight"].init_gain == 1.0


def test_model_anchor_at_base_width_keeps_hf_gpt2_bitwise() -> None:
    pytest.importorskip("transformers")
    from hptransfer.models.hf import gpt2_config, width_factory

    factory = width_factory(
        lambda w: gpt2_config(w, depth=2, vocab_size=64, seq_len=16, head_dim=8), wrap=False
    )
    torch.manual_seed(0)
    model = factory(32)
    own = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    roles = roles_from_factory(factory, 32, 32, tied="untie")
    parameterize(model, roles, make_rule("mup", "adam"), lr=1e-2, anchor="model")
    for name, p in model.named_parameters():
        assert torch.equal(p, own[name]), name


def test_model_anchor_takes_only_the_width_dependence_from_the_rule() -> None:
    torch.manual_seed(1)
    base = measure_init(Custom(64))
    model, own, par = _custom(256, 64, base_init=base)
    # the effective weight (raw times its forward multiplier)
    got = {n: rms(p) * par.table[n].multiplier for n, p in model.named_parameters()}
    # hidden: its own base-width size times m^-1/2 (m = 4); an input layer (fan_in fixed) and
    # the conv stem keep their own size, as the model drew them (0.02, kaiming)
    assert got["mid.weight"] == pytest.approx(base["mid.weight"] / 2, rel=1e-6)
    assert got["inp.weight"] == pytest.approx(base["inp.weight"], rel=1e-6)
    assert got["inp.weight"] == pytest.approx(0.02, rel=0.02)
    assert got["stem.weight"] == pytest.approx(base["stem.weight"], rel=1e-6)
    # biases keep their base-width size (the model's own shrinks as m^-1/2)
    assert rms(own["mid.bias"]) == pytest.approx(base["mid.bias"] / 2, rel=0.1)
    assert got["mid.bias"] == pytest.approx(base["mid.bias"], rel=1e-6)
    # a zero readout stays zero, a vector of special values keeps them
    assert torch.equal(model.out.weight, own["out.weight"])
    assert torch.equal(model.A_log, own["A_log"])
    assert par.table["A_log"].init_gain is None and par.table["A_log"].init_std is None


def test_model_anchor_away_from_base_width_needs_the_base_measurement() -> None:
    with pytest.raises(ConfigError, match=r"stem.weight: anchor model needs .*base_init"):
        _custom(128, 64)


def test_biases_start_at_a_width_independent_size_under_the_relative_anchor() -> None:
    def mlp(w: int) -> nn.Module:
        return build_model("mlp", width=w, depth=2, seq_len=8, head_dim=8)

    sizes = {}
    for width in (64, 1024):
        torch.manual_seed(0)
        model = mlp(width)
        own = rms(model.layers[0].bias)
        parameterize(model, roles_from_factory(mlp, width, 64), make_rule("mup", "adam"), lr=1)
        sizes[width] = (own, rms(model.layers[0].bias))
    assert sizes[1024][0] / sizes[64][0] == pytest.approx(0.25, rel=0.15)  # PyTorch's: m^-1/2
    assert sizes[1024][1] / sizes[64][1] == pytest.approx(1.0, rel=0.1)


def test_init_overrides_by_name_pattern() -> None:
    torch.manual_seed(1)
    base = measure_init(Custom(64))
    model, own, par = _custom(
        256, 64, base_init=base, init_overrides={"mid.weight": "keep", "inp.*": 0.5, "out.*": 0}
    )
    assert torch.equal(model.mid.weight, own["mid.weight"])
    mult = par.table["inp.weight"].multiplier
    assert rms(model.inp.weight) * mult == pytest.approx(0.5 * base["inp.weight"], rel=1e-6)
    assert not model.out.weight.any()
    assert par.table["mid.weight"].init_gain is None
    with pytest.raises(ConfigError, match=r"A_log \(vector\) has no init rule"):
        _custom(64, 64, init_overrides={"A_log": 1.0})
    with pytest.raises(ConfigError, match=r"init_overrides 'mid.\*' = 'big'"):
        _custom(64, 64, init_overrides={"mid.*": "big"})


def test_a_recipe_with_the_model_anchor_measures_the_base_width_init_itself() -> None:
    from hptransfer.assemble import build, model_factory
    from hptransfer.config import RunConfig

    cfg = RunConfig().replace(
        **{
            "model.name": "mlp",
            "model.width": 64,
            "model.depth": 2,
            "param.base_width": 16,
            "param.anchor": "model",
            "train.seq_len": 8,
        }
    )
    setup = build(cfg)
    torch.manual_seed(cfg.seed)
    own = model_factory(cfg, setup.corpus.vocab_size)(64)
    bias = setup.parameterization.table["layers.1.bias"]
    assert bias.init_gain == 1.0
    # the model's own hidden init (fan-in: m^-1/2) is already muP's: kept up to sampling noise
    got, want = rms(setup.model.layers[1].weight), rms(own.layers[1].weight)
    assert got == pytest.approx(want, rel=0.1)
    assert rms(setup.model.layers[1].bias) == pytest.approx(2 * rms(own.layers[1].bias), rel=0.2)
    same = cfg.replace(**{"model.width": 16})  # at base width: the model itself, bit for bit
    setup = build(same)
    torch.manual_seed(cfg.seed)
    own = model_factory(same, setup.corpus.vocab_size)(16)
    for (name, p), q in zip(setup.model.named_parameters(), own.parameters()):
        assert torch.equal(p, q), name


def test_init_overrides_from_a_recipe() -> None:
    from hptransfer.assemble import build
    from hptransfer.config import RunConfig

    cfg = RunConfig().replace(
        **{
            "model.name": "mlp",
            "model.width": 32,
            "param.base_width": 16,
            "train.seq_len": 8,
            "param.init_overrides": {"head.weight": "zero", "layers.0.*": "keep"},
        }
    )
    setup = build(cfg)
    assert not setup.model.head.weight.any()
    assert setup.parameterization.table["layers.0.weight"].init_std is None
    with pytest.raises(ConfigError, match=r"^param.init_overrides 'head.\*' = -1: use"):
        cfg.replace(**{"param.init_overrides": {"head.*": -1}})
