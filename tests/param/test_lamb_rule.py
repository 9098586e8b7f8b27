"""LAMB's spectral rule with its clamp binding (issue 14, items 1 and 2) and the spectral rules'
refusal of alignments they were not derived for (item 5)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from hptransfer.cli import main
from hptransfer.errors import ConfigError
from hptransfer.models import build_model
from hptransfer.optim import build_optimizer
from hptransfer.param.apply import parameterize
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import Alignment, make_rule

torch.set_num_threads(1)
HALF = Fraction(1, 2)


class Net3(nn.Module):
    """16 -> n -> n -> 64; every matrix's Frobenius norm stays above LAMB's clamp (10) in both
    forms at the widths used (input: sqrt(16 n0) = 32 times m^1/2 folded; readout: init x16)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.inp = nn.Linear(16, width, bias=False)
        self.hid = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, 64, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hid(torch.tanh(self.inp(x)))))


def _effective_updates(width: int, form: str) -> dict[str, torch.Tensor]:
    """One LAMB step under muP: the change of each layer's effective weight (multiplier x w)."""
    model = Net3(width).double()
    roles = roles_from_factory(Net3, width, 64)
    par = parameterize(
        model,
        roles,
        make_rule("mup", "lamb"),
        lr=1e-2,
        form=form,
        init_scale={"output": 16.0},
        generator=torch.Generator().manual_seed(0),
    )
    mult = {name: s.multiplier for name, s in par.table.items()}
    params = dict(model.named_parameters())
    for name, p in params.items():
        assert p.norm().item() > 10.0, (name, form)  # the clamp binds: LAMB's fixed step size
    before = {n: p.detach().clone() for n, p in params.items()}
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, generator=gen, dtype=torch.float64)
    y = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    opt = build_optimizer("lamb", par.param_groups)
    ((model(x) - y) ** 2).mean().backward()
    opt.step()
    return {n: mult[n] * (p.detach() - before[n]) for n, p in params.items()}


@pytest.mark.parametrize("width", [256, 1024])
def test_clamped_lamb_folded_form_trains_like_the_multiplier_form(width: int) -> None:
    """Folding a multiplier into the weights must not change training. With the clamp binding,
    LAMB's step has the fixed size lr * clamp whatever the weights' scale, so the folded LR
    takes the multiplier once (k = 1): input LR x m^1/2, readout x m^-1/2. With k = 0 (before)
    the folded input and readout updates were off by m^-+1/2."""
    multiplier = _effective_updates(width, "multiplier")
    folded = _effective_updates(width, "folded")
    for name in multiplier:
        torch.testing.assert_close(folded[name], multiplier[name], rtol=1e-6, atol=1e-12)


def test_clamped_lamb_switches_and_folded_exponents() -> None:
    """[K]'s switches all on, in the direct form: embedding LR ~ m^1/2 (c = -1/2), readout
    ~ m^-1/2 (c = 1/2), the slopes measured in issue 14 (0 and -0.28 before)."""
    rule = make_rule("sp", "lamb", k_switches="1111")
    c = {role: r.c for role, r in rule.roles.items()}
    assert c == {"input": -HALF, "hidden": 0, "output": HALF, "vector": -HALF}
    assert rule.k == 1
    assert make_rule("sp", "lamb", k_switches="1000").roles["input"].c == -HALF
    assert make_rule("sp", "lamb", k_switches="0001").roles["output"].c == HALF


def nanodo(width: int) -> nn.Module:
    return build_model("nanodo", width=width, depth=1, seq_len=16, head_dim=16, vocab_size=64)


def _gain_update_rms(width: int) -> float:
    """RMS of the final norm gain's update after one LAMB step under muP (gains start at 1, so
    ||w|| = sqrt(width) > 10: the clamp binds)."""
    torch.manual_seed(0)
    model = nanodo(width).double()
    roles = roles_from_factory(nanodo, width, 128)
    par = parameterize(model, roles, make_rule("mup", "lamb"), lr=1e-2)
    opt = build_optimizer("lamb", par.param_groups)
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    w0 = model.ln_f.weight.detach().clone()
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1).double(), x.flatten()).backward()
    opt.step()
    return (model.ln_f.weight.detach() - w0).pow(2).mean().sqrt().item()


def test_clamped_lamb_vector_updates_are_width_free() -> None:
    """The per-tensor trust ratio spreads the fixed norm lr * clamp over a gain's n entries
    (each lr * clamp / sqrt(n)); the vector rule c = -1/2 (LR x m^1/2) makes the entries'
    update width-free: measured slope 0 (it was -1/2 with c = 0). Exactly lr * clamp / sqrt(n0)
    here, since r / ||r|| has RMS 1 / sqrt(n)."""
    widths = [128, 256, 512]
    rms = [_gain_update_rms(w) for w in widths]
    assert rms == pytest.approx([1e-2 * 10 / 128**0.5] * 3, rel=1e-9)


@pytest.mark.parametrize(
    "optimizer,options",
    [("muon", {}), ("lamb", {}), ("shampoo", {})],
)
def test_spectral_rules_refuse_alignments_they_were_not_derived_for(optimizer, options) -> None:
    with pytest.raises(ConfigError, match="derived for full alignment.*param.alignment = full"):
        make_rule("mup", optimizer, "none", options=options)
    partial = Alignment(Fraction(3, 4), HALF, 1)
    with pytest.raises(ConfigError, match="derived for full alignment"):
        make_rule("mup", optimizer, {"hidden": partial, "output": partial}, options=options)
    # the global LR has no exponents to derive; full alignment is the rule
    assert make_rule("mup", optimizer, "none", lr_exponents="global").roles["hidden"].c == 0
    assert make_rule("mup", optimizer, "full").alignment == "full"


def test_rules_cli_refuses_alignment_none_for_muon(capsys: pytest.CaptureFixture) -> None:
    assert main(["rules", "--optimizer", "muon", "--alignment", "none"]) == 2
    err = capsys.readouterr().err
    assert "derived for full alignment" in err and err.count("\n") == 1


def test_unclamped_lamb_and_grafted_shampoo_follow_the_solver_for_any_alignment() -> None:
    """Their [E] family has no-alignment exponents: nothing to refuse."""
    lamb = make_rule("mup", "lamb", "none", options={"clamp": None})
    assert lamb.family == "adam_ps" and lamb.alignment == "none"
    shampoo = make_rule("mup", "shampoo", "none", options={"grafting": "adam"})
    assert shampoo.family == "adam" and shampoo.roles["hidden"].c == HALF


@pytest.mark.parametrize("clamp", ["abc", -1.0, 0, True, float("nan")])
def test_a_bad_clamp_is_refused_by_the_rule_and_the_optimizer(clamp) -> None:
    """Before any file is written: `rules --option clamp=abc` and building the optimizer (a
    TypeError at the first step, after the run directory was written, before)."""
    with pytest.raises(ConfigError, match="lamb option clamp"):
        make_rule("mup", "lamb", options={"clamp": clamp})
    with pytest.raises(ConfigError, match="lamb option clamp"):
        build_optimizer("lamb", [{"params": [torch.zeros(2, requires_grad=True)], "lr": 0.1}],
                        clamp=clamp)  # fmt: skip


def test_a_lamb_run_warns_where_its_clamp_does_not_bind_at_init() -> None:
    # nanodo (depth 2) at width 32: the 5 norm gains and 10 of 12 hidden matrices have norms
    # near sqrt(32) < 10; at width 256 every tensor binds, and so does every one under clamp 2
    from hptransfer.assemble import build
    from hptransfer.config import RunConfig

    cfg = RunConfig().replace(**{"optimizer.name": "lamb", "model.depth": 2, "model.head_dim": 8,
                                 "param.base_width": 16, "model.width": 32})  # fmt: skip
    match = (r"LAMB's clamp 10 does not bind at init for 15 of 20 tensors "
             r"\(blocks\.0\.ln1\.weight 5\.66, .*optimizer\.options\.clamp = X")  # fmt: skip
    with pytest.warns(UserWarning, match=match):
        build(cfg).parameterization.remove()
    for quiet in (cfg.replace(**{"model.width": 256}),
                  cfg.replace(**{"optimizer.options": {"clamp": 2.0}})):  # fmt: skip
        build(quiet).parameterization.remove()  # no warning: filterwarnings = error
