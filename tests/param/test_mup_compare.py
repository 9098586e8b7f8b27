"""hptransfer's muP against microsoft/mup's `set_base_shapes` + MuAdam / MuSGD on small
versions of mup's own example MLP and Transformer (written here after the examples' structure:
fan-in init, a 1/d attention scale, a readout that mup swaps for its MuReadout).

Both sides start from the same draws of the same model at width 4 x base. Per parameter and on
a first step with the same batch, the effective init size (raw rms x forward multiplier), the
effective update (rms of the raw step x multiplier) and the multiplier on the readout agree
(sampling noise aside: hptransfer measures the base-width init on a model of its own draws).
The raw tensors differ by the gauge docs/parameterizations.md explains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hptransfer.optim import build_optimizer
from hptransfer.param.apply import parameterize
from hptransfer.param.init import measure_init, rms
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import make_rule

mup = pytest.importorskip("mup")

BASE, WIDTH, V, IN = 32, 128, 50, 96


class ExampleMLP(nn.Module):
    """mup's examples/MLP network, smaller: fan-in normal init, tanh, a linear readout."""

    def __init__(self, w: int, readout: type[nn.Linear] = nn.Linear) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(IN, w, bias=False)
        self.fc_2 = nn.Linear(w, w, bias=False)
        self.fc_3 = readout(w, 10, bias=False)
        nn.init.kaiming_normal_(self.fc_1.weight, a=1, mode="fan_in")
        nn.init.kaiming_normal_(self.fc_2.weight, a=1, mode="fan_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_3(torch.tanh(self.fc_2(torch.tanh(self.fc_1(x)))))


class Block(nn.Module):
    """mup's examples/Transformer encoder layer: post-norm, N(0, 1/d) init, zero biases, an
    attention scale 1/head_dim."""

    def __init__(self, d: int, head_dim: int = 8) -> None:
        super().__init__()
        self.heads, self.head_dim = d // head_dim, head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.linear1, self.linear2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        for lin in (self.q, self.k, self.v, self.o, self.linear1, self.linear2):
            nn.init.normal_(lin.weight, std=d**-0.5)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (
            p(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
            for p in (self.q, self.k, self.v)
        )
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / self.head_dim)
        x = self.norm1(x + self.o(att.transpose(1, 2).reshape(B, T, D)))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class ExampleTransformer(nn.Module):
    """mup's examples/Transformer model, one layer, an untied readout with a bias."""

    def __init__(self, d: int, readout: type[nn.Linear] = nn.Linear) -> None:
        super().__init__()
        self.encoder = nn.Embedding(V, d)
        self.block = Block(d)
        self.decoder = readout(d, V)
        nn.init.normal_(self.decoder.weight, std=d**-0.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.block(self.encoder(idx)))


def _batch(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    if kind == "mlp":
        return torch.randn(16, IN, generator=g), torch.randint(0, 10, (16,), generator=g)
    idx = torch.randint(0, V, (4, 12), generator=g)
    return idx, idx


def _loss(model: nn.Module, kind: str) -> torch.Tensor:
    x, y = _batch(kind)
    out = model(x)
    return F.cross_entropy(out.flatten(0, -2) if kind != "mlp" else out, y.flatten())


def _step(model: nn.Module, opt: torch.optim.Optimizer, kind: str) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    _loss(model, kind).backward()
    opt.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def measure(kind: str, optimizer: str, lr: float) -> dict[str, dict[str, tuple[float, float]]]:
    """Per parameter: (mup, hptransfer) of init (effective rms), update (effective rms of the
    first step) and multiplier."""
    cls = ExampleMLP if kind == "mlp" else ExampleTransformer
    torch.manual_seed(0)
    ref = cls(WIDTH, readout=mup.MuReadout)
    with torch.device("meta"):
        mup.set_base_shapes(ref, cls(BASE, readout=mup.MuReadout))
    mup_opt = (mup.MuAdam if optimizer == "adam" else mup.MuSGD)(
        ref.parameters(), lr=lr, **({"eps": 1e-12} if optimizer == "adam" else {})
    )
    readout = ref.fc_3 if kind == "mlp" else ref.decoder
    mup_mult = {n: 1.0 for n, _ in ref.named_parameters()}
    mup_mult[next(n for n, p in ref.named_parameters() if p is readout.weight)] = (
        readout.output_mult / readout.width_mult()
    )
    mup_init = {n: rms(p) * mup_mult[n] for n, p in ref.named_parameters()}
    mup_step = _step(ref, mup_opt, kind)

    torch.manual_seed(0)
    model = cls(WIDTH)
    torch.manual_seed(1)
    base = measure_init(cls(BASE))
    roles = roles_from_factory(cls, WIDTH, BASE)
    par = parameterize(
        model,
        roles,
        make_rule("mup", optimizer),
        lr=lr,
        anchor="model",
        base_init=base,
        eps=1e-12 if optimizer == "adam" else None,
    )
    hp_mult = {n: par.table[n].multiplier for n in par.table}
    hp_init = {n: rms(p) * hp_mult[n] for n, p in model.named_parameters()}
    hp_step = _step(model, build_optimizer(optimizer, par.param_groups), kind)
    return {
        n: {
            "init": (mup_init[n], hp_init[n]),
            "update": (rms(mup_step[n]) * mup_mult[n], rms(hp_step[n]) * hp_mult[n]),
            "multiplier": (mup_mult[n], hp_mult[n]),
        }
        for n in hp_init
    }


@pytest.mark.parametrize(
    ("kind", "optimizer", "lr"),
    [("mlp", "adam", 1e-2), ("mlp", "sgd", 0.1), ("transformer", "adam", 1e-2)],
)
def test_effective_init_update_and_readout_multiplier_agree_with_microsoft_mup(
    kind: str, optimizer: str, lr: float
) -> None:
    table = measure(kind, optimizer, lr)
    assert len(table) >= (3 if kind == "mlp" else 18)
    for name, row in table.items():
        for what in ("init", "update"):
            ref, got = row[what]
            if ref == 0.0:  # zero biases stay zero and get the same step below
                assert got == 0.0, (name, what)
            else:
                assert got == pytest.approx(ref, rel=0.08), (name, what, ref, got)
    readout = "fc_3.weight" if kind == "mlp" else "decoder.weight"
    mup_mult, hp_mult = table[readout]["multiplier"]
    assert mup_mult == pytest.approx(BASE / WIDTH)  # 1 / width_mult
    # the readout's effective weight: mup gives it m^-1 as a multiplier, hptransfer (the [E]
    # gauge) m^-1/2 multiplier x m^-1/2 init; the same product (asserted above as "init")
    assert hp_mult == pytest.approx((BASE / WIDTH) ** 0.5)
