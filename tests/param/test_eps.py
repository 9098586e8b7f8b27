"""Epsilon modes (parameterizations.md §5): constant, small, per-layer, and the eps-free options."""

import pytest
import torch
import torch.nn.functional as F

from hptransfer.assemble import build
from hptransfer.config import ConfigError, RunConfig
from hptransfer.models import build_model
from hptransfer.optim import build_optimizer
from hptransfer.optim.diagnostics import optimizer_diagnostics
from hptransfer.optim.muon import routes_to_muon
from hptransfer.param.apply import parameterize
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import default_eps, make_rule

# muP's gradient exponents g (§5 table; vectors: the backward exponent 1), width_mult 4
G_MUP = {"input": 0.5, "hidden": 1.0, "output": 0.5, "vector": 1.0}
M = 4
EPS_OPTIMIZERS = ["adam", "adamw", "adam_ps", "adopt", "lamb", "sophia", "adafactor", "muon"]


def nanodo(width):
    return build_model("nanodo", width=width, depth=1, seq_len=16, head_dim=16)


def groups_for(optimizer, eps_mode, eps=None):
    model = nanodo(64 * M)
    roles = roles_from_factory(nanodo, 64 * M, 64)
    par = parameterize(
        model, roles, make_rule("mup", optimizer), lr=1e-3, eps=eps, eps_mode=eps_mode
    )
    return par, build_optimizer(optimizer, par.param_groups).param_groups


def adam_eps_groups(optimizer, groups):
    """The groups whose eps is an Adam-type epsilon (not Muon's Newton-Schulz groups)."""
    return [g for g in groups if not (optimizer == "muon" and routes_to_muon(g))]


def group_eps(optimizer, group):
    eps = group["eps"]
    return eps[0] if optimizer == "adafactor" else eps  # torch Adafactor keeps (eps1, eps2)


@pytest.mark.parametrize("optimizer", EPS_OPTIMIZERS)
def test_per_layer_eps_reaches_every_group(optimizer):
    """eps_l = eps * m^(-g_l), or m^(-2 g_l) for Sophia, whose eps floors rho * h ~ gradient^2.
    Muon's Newton-Schulz groups keep their fixed floor; its AdamW groups are per-layer."""
    power = 2 if optimizer == "sophia" else 1
    _, groups = groups_for(optimizer, "per_layer")
    roles = set()
    for g in groups:
        if optimizer == "muon" and routes_to_muon(g):
            assert g["eps"] == 1e-7
            continue
        roles.add(g["role"])
        want = default_eps(optimizer) * M ** (-power * G_MUP[g["role"]])
        assert group_eps(optimizer, g) == pytest.approx(want, rel=1e-12), g["role"]
    assert roles == ({"input", "output", "vector"} | ({"hidden"} if optimizer != "muon" else set()))


def test_hand_values_for_adam():
    _, groups = groups_for("adam", "per_layer", eps=1e-8)
    eps = {g["role"]: g["eps"] for g in groups}
    assert eps == pytest.approx({"input": 5e-9, "hidden": 2.5e-9, "output": 5e-9, "vector": 2.5e-9})


def test_shampoo_per_layer_eps_follows_the_eigenvalue_scale():
    """Shampoo's eps is relative to the eigenvalues (scale free): per-layer mode keeps its value
    and makes sure it is relative; the constant modes leave that to the optimizer's knob."""
    par, groups = groups_for("shampoo", "per_layer")
    assert all(g["eps_relative"] is True for g in par.param_groups)
    assert all(g["eps"] == default_eps("shampoo") for g in groups)
    par, _ = groups_for("shampoo", "constant")
    assert not any("eps_relative" in g for g in par.param_groups)


@pytest.mark.parametrize("optimizer", [*EPS_OPTIMIZERS, "shampoo"])
def test_constant_and_small_modes(optimizer):
    _, groups = groups_for(optimizer, "constant")
    assert {group_eps(optimizer, g) for g in adam_eps_groups(optimizer, groups)} == {
        default_eps(optimizer)
    }
    _, groups = groups_for(optimizer, "small")
    small = {group_eps(optimizer, g) for g in adam_eps_groups(optimizer, groups)}
    assert small == {min(default_eps(optimizer), 1e-15)}
    with pytest.raises(ValueError, match="small sets epsilon itself"):
        groups_for(optimizer, "small", eps=1e-8)


@pytest.mark.parametrize("optimizer", ["adam_atan2", "sgd"])
@pytest.mark.parametrize("eps_mode", ["constant", "small", "per_layer"])
def test_epsilon_free_optimizers_get_no_epsilon(optimizer, eps_mode):
    par, _ = groups_for(optimizer, eps_mode)
    assert not any("eps" in g for g in par.param_groups)


def _underflow_by_role(width, eps_mode):
    """Fraction of coordinates with sqrt(v_hat) < eps after one Adam step (v_hat = g^2)."""
    cfg = RunConfig().replace(
        **{
            "model.width": width,
            "model.depth": 1,
            "model.head_dim": 16,
            "param.name": "mfp",
            "param.base_width": 64,
            "train.seq_len": 32,
            "optimizer.eps": 2e-4,
            "param.eps_mode": eps_mode,
        }
    )
    s = build(cfg.validate())
    x = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    F.cross_entropy(s.model(x).flatten(0, 1), x.flatten()).backward()
    s.optimizer.step()
    diag = optimizer_diagnostics("adam", s.optimizer, {p: n for n, p in s.model.named_parameters()})
    by_role: dict[str, list[float]] = {}
    for e in s.roles:
        by_role.setdefault(e.role, []).append(diag[f"underflow/{e.name}"])
    return {r: sum(v) / len(v) for r, v in by_role.items()}


def test_per_layer_eps_keeps_the_underflow_fraction_width_free():
    """mfp's gradients shrink fastest (§5): with a constant eps the hidden underflow fraction
    jumps from ~0.08 to ~0.56 over 4x width; eps * m^-g keeps every matrix role where it was."""
    const = [_underflow_by_role(w, "constant") for w in (64, 256)]
    per_layer = [_underflow_by_role(w, "per_layer") for w in (64, 256)]
    assert const[1]["hidden"] > const[0]["hidden"] + 0.3
    for role in ("input", "hidden", "output"):
        assert per_layer[1][role] == pytest.approx(per_layer[0][role], abs=0.03), role


def test_config_errors():
    with pytest.raises(ConfigError, match="eps_mode = small sets epsilon itself"):
        RunConfig().replace(**{"param.eps_mode": "small", "optimizer.eps": 1e-8}).validate()
    with pytest.raises(ConfigError, match="param.eps_mode"):
        RunConfig().replace(**{"param.eps_mode": "tiny"}).validate()
