"""The zoo (issue 12's acceptance): for 17 architectures built from configs with random init,
the roles inferred from how each parameter is used equal a table written by hand
(tests/zoo/tables), muP + Adam keeps every layer's activation size width-free over 4x width
while SP with one global LR does not, and muP at the base width with the model anchor is the
model's own init, bit for bit."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from zoo_models import Arch, zoo

from hptransfer.param.apply import parameterize
from hptransfer.param.roles import RoleTable, roles_from_factory
from hptransfer.param.rules import make_rule

TABLES = Path(__file__).parent / "tables"
ARCHS = zoo()
NAMES = sorted(p.stem for p in TABLES.glob("*.txt"))


def read_table(name: str) -> dict[str, tuple[str, int, int]]:
    rows = {}
    for line in (TABLES / f"{name}.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pname, role, fan_in, fan_out = line.split()
            rows[pname] = (role, int(fan_in), int(fan_out))
    return rows


def arch(name: str) -> Arch:
    if name not in ARCHS:
        pytest.skip(f"{name} needs transformers")
    return ARCHS[name]


def test_the_zoo_has_16_architectures_or_more() -> None:
    assert len(NAMES) >= 16 and set(built := zoo()) <= set(NAMES)
    if set(built) != set(NAMES):  # the tables without a model are Hugging Face models'
        pytest.importorskip("transformers")
        pytest.fail(f"tables without a model: {sorted(set(NAMES) - set(built))}")


@pytest.mark.parametrize("name", NAMES)
def test_roles_from_use_equal_the_hand_written_table(name: str) -> None:
    a = arch(name)
    roles = roles_from_factory(a.make, 64, 32, tied=a.tied, example=a.example())
    got = {e.name: (e.role, e.fan_in, e.fan_out) for e in roles}
    want = read_table(name)
    assert got == want, {
        n: (got.get(n), want.get(n)) for n in got.keys() | want.keys() if got.get(n) != want.get(n)
    }


@functools.cache
def zoo_roles(name: str, width: int) -> RoleTable:
    a = arch(name)
    return roles_from_factory(a.make, width, 64, tied=a.tied, example=a.example())


def activation_rms(a: Arch, param: str, width: int, lr: float, steps: int) -> dict[str, float]:
    """RMS of the output of every module that owns parameters, in the forward pass after
    ``steps`` Adam steps of ``param`` (relative anchor, base width 64, folded form; the readout
    starts at zero, as microsoft/mup recommends, so the logits are the updates' alone)."""
    roles = zoo_roles(a.name, width)
    torch.manual_seed(0)
    model = a.make(width)
    rule = make_rule(param, "adam", lr_exponents="global" if param == "sp" else "per_layer")
    gen = torch.Generator().manual_seed(0)
    par = parameterize(
        model,
        roles,
        rule,
        lr=lr,
        form="folded",
        init_scale={"output": 0.0},
        eps=1e-15,
        generator=gen,
    )
    opt = torch.optim.Adam(par.param_groups)
    for _ in range(steps):
        opt.zero_grad()
        a.loss(model).backward()
        opt.step()
    rms: dict[str, float] = {}

    def record(name: str):
        def hook(module: nn.Module, args: object, out: object) -> None:
            while isinstance(out, (tuple, list)):
                out = out[0]
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                rms[name] = out.detach().float().pow(2).mean().sqrt().item()

        return hook

    owners = [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(False))]
    handles = [m.register_forward_hook(record(n)) for n, m in owners]
    with torch.no_grad():
        a.loss(model)
    for h in handles:
        h.remove()
    return rms


def slopes(name: str, param: str, lr: float) -> dict[str, float]:
    """Log-log slope of each layer's activation RMS from width 64 to 256 after 3 steps."""
    a = arch(name)
    small, large = (activation_rms(a, param, w, lr, steps=3) for w in (64, 256))
    return {n: math.log(large[n] / small[n]) / math.log(4) for n in small if small[n] > 0}


OWN_SCALING = {("t5", "lm_head"): -0.5}
"""Layers whose size the model itself scales with width: stock T5 multiplies the decoder
output by d_model^-1/2 before its readout (config.scale_decoder_outputs), so under muP its
logits fall as width^-1/2; issue 12 item 4 (detecting the model's own scaling) is about it."""


@pytest.mark.parametrize("name", NAMES)
def test_mup_keeps_every_layer_width_free_and_sp_grows(name: str) -> None:
    lr = 2e-2
    mup = slopes(name, "mup", lr)
    bad = {
        layer: round(s, 2)
        for layer, s in mup.items()
        if abs(s - OWN_SCALING.get((name, layer), 0.0)) > 0.2
    }
    assert not bad, f"muP layers of {name} whose activations scale with width: {bad}"
    sp = slopes(name, "sp", lr)
    assert max(sp.values()) > 0.4, f"SP with a global LR: {name} does not grow: {sp}"


@pytest.mark.parametrize("name", NAMES)
def test_mup_at_base_width_with_the_model_anchor_is_the_models_own_init(name: str) -> None:
    """microsoft/mup's property: at the base width the parameterized model IS the model as it
    initializes itself, bit for bit, every parameter (the width dependence starts above it)."""
    a = arch(name)
    roles = zoo_roles(name, 64)
    torch.manual_seed(0)
    own = dict(a.make(64).named_parameters())
    torch.manual_seed(0)
    model = a.make(64)
    rule = make_rule("mup", "adam")
    parameterize(model, roles, rule, lr=1e-3, anchor="model", form="folded")
    for pname, p in model.named_parameters():
        source = pname if pname in own else roles[pname].tied_to  # an untied head: its embedding
        assert source is not None and torch.equal(p, own[source]), pname
