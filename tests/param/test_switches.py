"""[K]'s four SP -> muP switches (parameterizations.md §7) and their 16 combinations."""

from fractions import Fraction

import pytest

from hptransfer.assemble import build
from hptransfer.config import ConfigError, RunConfig
from hptransfer.models import build_model
from hptransfer.param.apply import compute_specs
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import SWITCH_COMBINATIONS, make_rule, switch_name, switch_rule

H = Fraction(1, 2)
CODES = list(SWITCH_COMBINATIONS)


def test_sixteen_named_combinations():
    assert len(CODES) == 16 == len(set(SWITCH_COMBINATIONS.values()))
    assert switch_name("0000") == "sp"
    assert switch_name("1000") == "sp+embd"  # [K]'s SP+Embd
    assert switch_name("0111") == "sp+attn+norm+readout"  # [K]'s muP without the embedding switch
    assert switch_name("1111") == "mup"
    with pytest.raises(ValueError, match="four 0/1 digits"):
        switch_name("102")


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("lr_exponents,c_h", [("per_layer", 1), ("global", 0)])
def test_each_combination_sets_the_expected_roles_under_adam(code, lr_exponents, c_h):
    """Hand table for Adam, from §7: a switch that is on gives its role muP's LR ratio to the
    hidden layers (embedding and norm gains x width_mult, i.e. c lower by 1) or muP's readout
    (init std n^-1 in the direct form, the hidden LR); off keeps SP (same LR, std n^-1/2)."""
    embd, _, norm, readout = (d == "1" for d in code)
    rule = make_rule("sp", "adam", lr_exponents=lr_exponents, k_switches=code)
    r = rule.roles
    assert rule.parameterization == SWITCH_COMBINATIONS[code]
    assert all(r[role].a == 0 for role in r)  # direct form: no multipliers
    assert (r["hidden"].b, r["hidden"].c) == (H, c_h)
    assert (r["input"].b, r["input"].c) == (0, c_h - 1 if embd else c_h)
    assert r["vector"].c == (c_h - 1 if norm else c_h)
    assert (r["output"].b, r["output"].c) == ((1, c_h) if readout else (H, c_h))


def test_all_off_with_a_global_lr_is_sp():
    ours = make_rule("sp", "adam", lr_exponents="global", k_switches="0000").roles
    sp = make_rule("sp", "adam", lr_exponents="global").roles
    for role in sp:
        assert (ours[role].a, ours[role].b, ours[role].c, ours[role].g) == (
            sp[role].a,
            sp[role].b,
            sp[role].c,
            sp[role].g,
        )


def nanodo(width):
    return build_model("nanodo", width=width, depth=1, seq_len=32, head_dim=16)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "muon", "shampoo"])
def test_all_on_is_mup_in_folded_form(optimizer):
    """Per parameter: the same init std, LR, epsilon and (no) multiplier as muP folded."""
    roles = roles_from_factory(nanodo, 256, 64)
    ours = compute_specs(
        roles, make_rule("sp", optimizer, k_switches="1111"), eps=1e-8, eps_mode="per_layer"
    )
    mup = compute_specs(
        roles, make_rule("mup", optimizer), eps=1e-8, eps_mode="per_layer", form="folded"
    )
    assert ours.keys() == mup.keys()
    for name in ours:
        a, b = ours[name], mup[name]
        assert a.multiplier == b.multiplier == 1.0
        for key in ("init_std", "lr_factor", "eps"):
            x, y = getattr(a, key), getattr(b, key)
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-12), (name, key)


def test_embedding_switch_multiplies_the_embedding_lr_by_width_mult():
    """[K]'s SP+Embd under AdamW: embedding LR x m relative to the hidden layers."""
    cfg = RunConfig().replace(
        **{
            "model.width": 256,
            "model.depth": 1,
            "param.name": "sp",
            "param.base_width": 64,
            "param.lr_exponents": "global",
            "optimizer.name": "adamw",
            "optimizer.lr": 1e-3,
        }
    )
    for code, ratio in (("0000", 1.0), ("1000", 4.0)):
        groups = build(cfg.replace(**{"param.k_switches": code})).optimizer.param_groups
        lr = {g["role"]: g["lr"] for g in groups}
        assert lr["hidden"] == pytest.approx(1e-3)
        assert lr["input"] == pytest.approx(ratio * 1e-3)


@pytest.mark.parametrize("code,scale", [("0000", 16**-0.5), ("0100", 1 / 16)])
def test_attention_switch_sets_the_models_attention_scale(code, scale):
    cfg = RunConfig().replace(
        **{"model.width": 64, "model.depth": 1, "model.head_dim": 16, "param.name": "sp"}
    )
    model = build(cfg.replace(**{"param.k_switches": code}).validate()).model
    assert model.blocks[0].attn.scale == pytest.approx(scale)


@pytest.mark.parametrize(
    "over,match",
    [
        ({"param.k_switches": "1000"}, "set param.name = sp"),
        ({"param.name": "sp", "param.k_switches": "10"}, "four 0/1 digits"),
        ({"param.name": "sp", "param.k_switches": "1000", "param.alignment": "none"}, "alignment"),
        ({"param.name": "sp", "param.k_switches": "1020"}, "four 0/1 digits"),
        (
            {"param.name": "sp", "param.k_switches": "1000", "model.attn_scale": "linear"},
            "second switch",
        ),
    ],
)
def test_config_errors(over, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig().replace(**over).validate()


def test_switch_rule_refuses_other_parameterizations():
    with pytest.raises(ValueError, match="on top of sp"):
        make_rule("mup", "adam", k_switches="1111")
    with pytest.raises(ValueError, match="lr_exponents"):
        switch_rule("1111", "adam", lr_exponents="nope")
