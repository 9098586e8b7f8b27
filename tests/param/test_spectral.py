"""One-step spectral check ([S]): under each optimizer's muP rule the spectral norm of a hidden
layer's update, divided by sqrt(fan_out / fan_in), does not grow with width."""

import numpy as np
import pytest
import torch
from torch import nn

from hptransfer.optim import build_optimizer
from hptransfer.param.apply import parameterize
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import ABC, make_rule, solve_c, spectral_c

WIDTHS = [128, 256, 512, 1024]


class Net3(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.inp = nn.Linear(16, width, bias=False)
        self.hid = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, 8, bias=False)

    def forward(self, x):
        return self.out(torch.tanh(self.hid(torch.tanh(self.inp(x)))))


# name, knobs, is the hidden rule width-dependent (so switching it off must show a slope)?
CASES = [
    ("adam", {}, True),
    ("adamw", {}, True),
    ("adam_atan2", {}, True),
    ("adopt", {}, True),
    ("sophia", {}, True),
    ("adam_ps", {}, True),
    ("lamb", {"clamp": None}, True),
    ("lamb", {}, False),
    ("shampoo", {"precondition_frequency": 1, "max_preconditioner_dim": 1024}, False),
    # blocks of 128: 1 to 8 per side over these widths, so the rule's block factor is needed
    ("shampoo", {"precondition_frequency": 1, "max_preconditioner_dim": 128}, True),
    ("muon", {}, False),
]


def hidden_update_norm(optimizer, knobs, width, per_layer):
    torch.manual_seed(0)
    model = Net3(width).double()
    roles = roles_from_factory(Net3, width, 128)
    rule = make_rule(
        "mup", optimizer, lr_exponents="per_layer" if per_layer else "global", options=knobs
    )
    p = parameterize(model, roles, rule, lr=1e-3, generator=torch.Generator().manual_seed(0))
    opt = build_optimizer(optimizer, p.param_groups, **knobs)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    w0 = model.hid.weight.detach().clone()
    for _ in range(2):  # ADOPT's first step only initializes its second moment
        if hasattr(opt, "refresh_curvature"):
            opt.refresh_curvature(lambda: model(x), y.argmax(-1))
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dw = model.hid.weight.detach() - w0
    return torch.linalg.matrix_norm(dw, ord=2).item()  # fan_out / fan_in = 1


def slope(optimizer, knobs, per_layer):
    norms = [hidden_update_norm(optimizer, knobs, w, per_layer) for w in WIDTHS]
    return np.polyfit(np.log(WIDTHS), np.log(norms), 1)[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "optimizer,knobs,width_dependent",
    CASES,
    ids=[f"{c[0]}{'-' + str(c[1]) if c[1] else ''}" for c in CASES],
)
def test_hidden_update_spectral_norm_is_width_free(optimizer, knobs, width_dependent):
    s = slope(optimizer, knobs, per_layer=True)
    assert abs(s) < 0.1, f"{optimizer}: slope {s:.3f} under its muP rule"
    off = slope(optimizer, knobs, per_layer=False)
    if width_dependent:
        assert off > 0.35, f"{optimizer}: with the rule off the slope is only {off:.3f}"
    else:
        assert abs(off) < 0.1  # hidden c = 0: width-free with or without the rule


def test_spectral_adam_row_equals_full_alignment_solver():
    assert spectral_c("adam", ABC["mup"]) == solve_c(ABC["mup"], "adam", "full")


def test_spectral_only_optimizers_refuse_other_parameterizations():
    with pytest.raises(ValueError, match="spectral muP"):
        make_rule("sp", "muon")
    assert make_rule("sp", "shampoo", options={"grafting": "adam"}).family == "adam"


@pytest.mark.parametrize("shape", [(32, 32), (256, 96), (512, 128), (100, 3, 3), (129, 1024)])
@pytest.mark.parametrize("block", [32, 128])
def test_rule_counts_shampoos_blocks(shape, block):
    from hptransfer.optim.shampoo import block_classes
    from hptransfer.param.rules import n_blocks

    cols = int(np.prod(shape[1:]))
    assert n_blocks(shape, block) == sum(g.count for g in block_classes(shape[0], cols, block))
