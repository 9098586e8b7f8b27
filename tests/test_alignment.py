"""Alignment probes (parameterizations.md §3) and the "measured" alignment preset."""

import json
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from hptransfer.analysis.alignment import average_by_role, parse_window
from hptransfer.assemble import build
from hptransfer.cli import main
from hptransfer.config import ConfigError, RunConfig, load_recipe
from hptransfer.models import hidden_depth
from hptransfer.param.rules import ABC, measured_alignment, solve_c
from hptransfer.probes.alignment import AlignmentProbe, alignment_exponents
from hptransfer.store import read_metrics
from hptransfer.train import train

N = 1024  # the acceptance tests ask for n >= 1024
H = Fraction(1, 2)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


def outer(a, b):
    return a[:, None] * b[None, :]


# --- the exponents on constructed cases --------------------------------------------------------


def test_alpha_is_one_for_a_rank_one_update_along_the_input():
    x0 = randn(1, N, seed=1)
    w0 = randn(N, N, seed=2) / math.sqrt(N)
    w = w0 + 1e-3 * outer(randn(N, seed=3), x0[0])  # dW = s a x0^T
    e = alignment_exponents(w0, w, x0, x0 + randn(1, N, seed=4))
    assert e["alpha"] == pytest.approx(1.0, abs=0.05)


# The "independent" cases below add a large, fully aligned term elsewhere in W x (a distractor):
# an exponent that read the wrong factor (W for W0, x for x0, ...) would pick it up.


def test_alpha_is_one_half_for_an_update_independent_of_the_input():
    x0 = randn(16, N, seed=1)
    w0 = randn(N, N, seed=2) / math.sqrt(N)
    dw = 1e-3 * randn(N, N, seed=3)
    top = torch.linalg.svd(dw)[2][0]  # distractor: dx along dW's top direction, 10x x0's size
    e = alignment_exponents(w0, w0 + dw, x0, x0 + 10 * math.sqrt(N) * top.expand(16, N))
    assert e["alpha"] == pytest.approx(0.5, abs=0.05)


def test_omega_is_one_when_the_input_change_lines_up_with_w0():
    a, b = randn(N, seed=1), randn(N, seed=2)
    w0 = outer(a, b) / N  # rank-1 W0 whose row space is b
    x0 = randn(4, N, seed=3)
    dx = 0.1 * b.expand(4, N)
    e = alignment_exponents(w0, w0 + 1e-3 * randn(N, N, seed=4), x0, x0 + dx)
    assert e["omega"] == pytest.approx(1.0, abs=0.05)


def test_omega_is_one_half_for_an_input_change_independent_of_w0():
    w0 = randn(N, N, seed=1) / math.sqrt(N)
    x0 = randn(16, N, seed=2)
    d = randn(N, seed=3)
    dx = randn(16, N, seed=4) + d  # rows share the direction d
    dw = 10 * outer(randn(N, seed=5), d) / N  # distractor: dW dx ~ 10x W0 dx
    e = alignment_exponents(w0, w0 + dw, x0, x0 + dx)
    assert e["omega"] == pytest.approx(0.5, abs=0.05)


def test_omega_of_a_gaussian_w0_is_one_half_even_when_fully_aligned():
    """Why the full-alignment row has omega = 1/2: dx along the top singular vector of a
    Gaussian W0 only gains its spectral norm ~ 2 sqrt(n) std, i.e. 1/2 + log_n 2."""
    w0 = randn(N, N, seed=1) / math.sqrt(N)
    top = torch.linalg.svd(w0)[2][0]
    x0 = randn(1, N, seed=2)
    e = alignment_exponents(w0, w0, x0, x0 + top[None, :])
    assert e["omega"] == pytest.approx(0.5 + math.log(2) / math.log(N), abs=0.02)


def test_u_is_one_for_an_update_along_the_input_change():
    d = randn(N, seed=1)
    w0 = randn(N, N, seed=2) / math.sqrt(N)
    w = w0 + 1e-3 * outer(randn(N, seed=3), d)
    x0 = randn(4, N, seed=4)
    e = alignment_exponents(w0, w, x0, x0 + d.expand(4, N))
    assert e["u"] == pytest.approx(1.0, abs=0.05)


def test_u_is_one_half_for_an_update_independent_of_the_input_change():
    d = randn(N, seed=1)
    w0 = outer(randn(N, seed=2), d)  # distractor: W0 along the input change, 1000x dW
    w = w0 + 1e-3 * randn(N, N, seed=3)
    x0 = randn(16, N, seed=4)
    e = alignment_exponents(w0, w, x0, x0 + randn(16, N, seed=5) + d)
    assert e["u"] == pytest.approx(0.5, abs=0.05)


def test_exponents_ignore_scalar_multipliers_and_the_log_base_is_fan_in():
    n_out, n_in = 64, 256
    w0 = randn(n_out, n_in, seed=1)
    w = w0 + 0.1 * randn(n_out, n_in, seed=2)
    x0, x = randn(8, n_in, seed=3), randn(8, n_in, seed=4)
    e = alignment_exponents(w0, w, x0, x)
    scaled = alignment_exponents(3 * w0, 3 * w, 0.5 * x0, 0.5 * x)
    for k in e:
        assert scaled[k] == pytest.approx(e[k], abs=1e-12)
    ratio = (x0 @ (w - w0).T).pow(2).mean().sqrt() / (
        (w - w0).pow(2).mean().sqrt() * x0.pow(2).mean().sqrt()
    )
    assert e["alpha"] == pytest.approx(math.log(ratio) / math.log(n_in), abs=1e-12)


def test_vanishing_factors_give_nan():
    w0, x0 = randn(8, 8, seed=1), randn(2, 8, seed=2)
    e = alignment_exponents(w0, w0, x0, x0)
    assert all(math.isnan(v) for v in e.values())


# --- the probe on a model ----------------------------------------------------------------------


def test_probe_measures_each_linear_layer_on_the_fixed_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(N, N, bias=False), nn.Linear(N, N, bias=False)).double()
    x0 = randn(1, N, seed=1)
    probe = AlignmentProbe(model, lambda: model(x0))
    assert not model[0]._forward_pre_hooks  # hooks live only during the probe's forward
    with torch.no_grad():  # a rank-1 step of layer 0 along its input
        model[0].weight += 1e-2 * outer(randn(N, seed=2), x0[0])
    out = probe.measure()
    assert out["align/alpha/0.weight"] == pytest.approx(1.0, abs=0.05)
    # layer 1 did not move but its input did: only omega, ~1/2 (W0 independent of dx)
    assert out["align/omega/1.weight"] == pytest.approx(0.5, abs=0.05)
    assert set(out) == {"align/alpha/0.weight", "align/omega/1.weight"}


def tiny(**over):
    base = {
        "model.width": 32,
        "model.depth": 1,
        "model.head_dim": 16,
        "param.base_width": 32,
        "train.steps": 6,
        "train.batch_size": 4,
        "train.seq_len": 32,
        "train.eval_every": 6,
        "train.eval_batches": 1,
    }
    return load_recipe("src/hptransfer/recipes/tiny.toml", {**base, **over})


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = train(tiny(**{"train.align_every": 2}), out)
    return out, summary, read_metrics(out)


def test_training_logs_the_probes_without_changing_the_run(probed_run):
    out, summary, records = probed_run
    plain = train(tiny())
    assert summary["losses"] == plain["losses"]  # bit for bit
    with_align = [r["step"] for r in records if any(k.startswith("align/") for k in r)]
    assert with_align == [1, 3, 5]
    last = records[-1]
    for name in ("blocks.0.attn.q.weight", "blocks.0.mlp.fc_out.weight", "head.weight"):
        for e in ("alpha", "omega", "u"):
            assert 0.0 < last[f"align/{e}/{name}"] < 1.5


def test_average_by_role_and_window():
    records = [
        {
            "step": 0,
            "align/alpha/h.weight": 0.6,
            "align/omega/h.weight": 0.5,
            "align/u/h.weight": 0.7,
        },
        {
            "step": 9,
            "align/alpha/h.weight": 0.8,
            "align/omega/h.weight": 0.5,
            "align/u/h.weight": 0.9,
        },
        {
            "step": 9,
            "align/alpha/o.weight": 1.0,
            "align/omega/o.weight": 0.4,
            "align/u/o.weight": 1.0,
        },
        {"step": 19, "align/alpha/h.weight": 1.0, "align/omega/h.weight": 0.5, "loss": 3.0},
    ]
    roles = {"h.weight": "hidden", "o.weight": "output"}
    avg = average_by_role(records, roles)
    assert avg["hidden"]["alpha"] == pytest.approx(0.8)
    assert avg["hidden"]["u"] == pytest.approx(0.8)
    assert avg["hidden"]["steps"] == (1, 20)
    win = average_by_role(records, roles, parse_window("10:10"))  # step 9 = after 10 updates
    assert win["hidden"]["alpha"] == pytest.approx(0.8) and win["hidden"]["n_probes"] == 1
    assert win["output"]["omega"] == pytest.approx(0.4)
    assert parse_window("5:") == (5, None) and parse_window(":7") == (None, 7)
    with pytest.raises(ValueError, match="START:END"):
        parse_window("5")


def test_rules_alignment_from_a_run(probed_run, capsys):
    out, _, records = probed_run
    assert main(["rules", "--alignment-from", str(out), "--window", "4:6", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["alignment"] == "measured"
    hidden = d["measured_alignment"]["hidden"]
    assert hidden["steps"] == [4, 6]
    hidden_names = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc_in", "mlp.fc_out")
    expect = [
        r[f"align/alpha/blocks.0.{n}.weight"]
        for r in records
        if r["step"] in (3, 5)
        for n in hidden_names
    ]
    assert hidden["n_probes"] == len(expect) == 12  # two probes of six hidden matrices
    assert hidden["alpha"] == pytest.approx(sum(expect) / len(expect), abs=1e-12)
    al = measured_alignment(
        {
            # the printed --set line carries 4 decimals, and c is derived from those
            r: [round(d["measured_alignment"][r][e], 4) for e in ("alpha", "omega", "u")]
            for r in ("hidden", "output")
        }
    )
    # the run was mup + adam; the solver models the run's own chain of hidden layers
    model = json.loads((out / "config.json").read_text())["model"]
    c = solve_c(ABC["mup"], "adam", al, n_hidden=hidden_depth(model["name"], model["depth"]))
    for role in ("input", "hidden", "output"):
        assert d["roles"][role]["c"] == pytest.approx(float(c[role]), abs=1e-9)


def test_rules_alignment_from_errors(tmp_path, probed_run, capsys):
    assert main(["rules", "--window", "1:2"]) == 2
    assert main(["rules", "--alignment-from", str(tmp_path)]) == 2
    out = probed_run[0]
    assert main(["rules", "--alignment-from", str(out), "--window", "100:200"]) == 2
    assert "no alignment probes" in capsys.readouterr().err


# --- the measured preset reproduces the tables ---------------------------------------------------

FULL, NONE = (1, 0.5, 1), (0.5, 0.5, 0.5)
# hand-copied from parameterizations.md §4: (family, param, preset) -> (input, hidden, output)
CELLS = {
    ("adam", "sp", FULL): (0, 1, 1),
    ("adam", "mup", NONE): (H, H, 0),
    ("adam", "mfp", NONE): (0, 0, -H),
    ("sgd", "mfp", NONE): (-1, -3 * H, -1),
    ("sgd", "sp", FULL): (-H, H, 1),
    ("adam_ps", "mup", FULL): (0, H, 0),
}


@pytest.mark.parametrize("family", ["adam", "sgd", "adam_ps"])
@pytest.mark.parametrize("param", ["sp", "ntk", "mup", "mfp"])
@pytest.mark.parametrize("values,preset", [(FULL, "full"), (NONE, "none")])
def test_measured_values_reproduce_the_preset_tables(family, param, values, preset):
    got = solve_c(ABC[param], family, measured_alignment({"hidden": values, "output": values}))
    want = solve_c(ABC[param], family, preset)
    for role in ("input", "hidden", "output", "vector"):
        assert got[role] == pytest.approx(float(want[role]), abs=1e-9)
    cell = CELLS.get((family, param, values))
    if cell is not None:
        assert tuple(got[r] for r in ("input", "hidden", "output")) == pytest.approx(
            [float(v) for v in cell], abs=1e-9
        )


def test_measured_config_builds_the_full_alignment_run():
    measured = tiny(
        **{
            "param.alignment": "measured",
            "param.alignment_values": {"hidden": [1, 0.5, 1], "output": [1.0, 0.5, 1.0]},
            "model.width": 64,
        }
    )
    full = tiny(**{"model.width": 64})
    lrs = [
        sorted((g["role"], g["lr"]) for g in build(c).optimizer.param_groups)
        for c in (measured, full)
    ]
    assert [r for r, _ in lrs[0]] == [r for r, _ in lrs[1]]
    assert [lr for _, lr in lrs[0]] == pytest.approx([lr for _, lr in lrs[1]], rel=1e-9)
    assert len({lr for _, lr in lrs[0]}) > 1  # width 64 vs base 32: the roles' LRs differ


@pytest.mark.parametrize(
    "over,match",
    [
        ({"param.alignment": "measured"}, "exactly hidden and output"),
        (
            {"param.alignment": "measured", "param.alignment_values.hidden": [1, 0.5]},
            "exactly hidden and output",
        ),
        (
            {
                "param.alignment": "measured",
                "param.alignment_values.hidden": [1, 0.5],
                "param.alignment_values.output": [1, 0.5, 1],
            },
            r"hidden must be \[alpha, omega, u\]",
        ),
        ({"param.alignment_values.hidden": [1, 0.5, 1]}, "only with param.alignment = measured"),
        ({"train.align_every": -1}, "align_every"),
        ({"train.align_every": 5, "train.distributed": "fsdp"}, "do not support fsdp"),
        ({"train.align_batch": 0}, "align_batch"),
    ],
)
def test_config_errors(over, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig().replace(**over).validate()
