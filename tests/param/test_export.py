"""Checkpoints and exports that survive (issue 12 item 5): a folded export that stock
transformers loads with the same logits, torch.save round trips, bitwise resume from a state
dict with ``parameterize(..., init=False)``, and refusals by name where a multiplier has no
single weight to go into."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from hptransfer.errors import ConfigError
from hptransfer.optim import build_optimizer
from hptransfer.param.apply import parameterize, scale_branches
from hptransfer.param.export import export_folded
from hptransfer.param.roles import roles_from_factory
from hptransfer.param.rules import make_rule

V, T = 64, 16


def tokens(seed: int, B: int = 2) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _hf_factory(name: str):
    from hptransfer.models.hf import gpt2_config, llama_config, width_factory

    shape = dict(depth=2, vocab_size=V, seq_len=T, head_dim=8)
    if name == "qwen3":  # queries normalized after the projection (q_norm)
        import transformers

        def make(w: int, **kw: int) -> object:
            config = llama_config(w, **kw).to_dict()
            return transformers.Qwen3Config(**{k: config[k] for k in QWEN3_KEYS})
    else:
        make = gpt2_config if name == "gpt2" else llama_config
    return width_factory(lambda w: make(w, **shape), attn_scale="linear", wrap=False)


QWEN3_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "tie_word_embeddings",
)


def _trained_hf(name: str, steps: int = 3):
    """A tiny transformers model at width 64 (base 16), muP + Adam, trained a few steps."""
    factory = _hf_factory(name)
    torch.manual_seed(0)
    model = factory(64)
    roles = roles_from_factory(factory, 64, 16, tied="untie")
    par = parameterize(model, roles, make_rule("mup", "adam"), lr=3e-3, anchor="relative")
    opt = build_optimizer("adam", par.param_groups)
    for step in range(steps):
        x = tokens(10 + step)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, par


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen3"])
def test_export_loads_in_stock_transformers_with_the_same_logits(name: str, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from hptransfer.models.hf import export_pretrained

    model, par = _trained_hf(name)
    assert {s.multiplier for s in par.table.values()} >= {2.0, 0.5}  # m = 4: sqrt(m)^+-1
    model.eval()
    x = tokens(99)
    with torch.no_grad():
        want = model(input_ids=x).logits
        export_pretrained(model).save_pretrained(tmp_path)
        stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        got = stock(input_ids=x).logits
    assert not any(stock._forward_pre_hooks or m._forward_hooks for m in stock.modules())
    assert stock.config.tie_word_embeddings is False
    assert (got - want).abs().max().item() < 1e-6
    with torch.no_grad():  # the multipliers and the attention scale were in effect
        plain = transformers.AutoModelForCausalLM.from_config(stock.config)
        plain.load_state_dict(stock.state_dict())
        assert torch.equal(plain.eval()(input_ids=x).logits, got)
    par.remove()
    with torch.no_grad():
        assert (model(input_ids=x).logits - want).abs().max().item() > 1e-3


def test_hf_model_survives_torch_save() -> None:
    pytest.importorskip("transformers")
    model, _ = _trained_hf("gpt2", steps=1)
    model.eval()
    buf = io.BytesIO()
    torch.save(model, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    x = tokens(5)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).logits, model(input_ids=x).logits)


class Net(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, w)
        self.mid = nn.Linear(w, w)
        self.head = nn.Linear(w, V, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.emb(x))))


def _net(seed: int, init: bool = True) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Net(64)
    roles = roles_from_factory(Net, 64, 16)
    gen = torch.Generator().manual_seed(seed)
    par = parameterize(model, roles, make_rule("mup", "adam"), lr=1e-2, init=init, generator=gen)
    return model, build_optimizer("adam", par.param_groups)


def _steps(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> list[float]:
    losses = []
    for step in steps:
        x = tokens(step)
        loss = nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_resume_from_a_state_dict_reproduces_the_uninterrupted_losses_bitwise() -> None:
    model, opt = _net(0)
    uninterrupted = _steps(model, opt, range(6))
    model, opt = _net(0)
    first = _steps(model, opt, range(3))
    state = {"model": model.state_dict(), "opt": opt.state_dict()}
    buf = io.BytesIO()
    torch.save(state, buf)
    state = torch.load(io.BytesIO(buf.getvalue()))
    fresh, fresh_opt = _net(1, init=False)  # other weights: all come from the checkpoint
    fresh.load_state_dict(state["model"])
    fresh_opt.load_state_dict(state["opt"])
    assert first + _steps(fresh, fresh_opt, range(3, 6)) == uninterrupted


def test_export_folded_is_a_plain_model_with_the_same_outputs() -> None:
    model, opt = _net(0)
    _steps(model, opt, range(2))
    x = tokens(7)
    plain = export_folded(model)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in plain.modules())
    assert torch.equal(plain(x), model(x))  # m = 4: the multipliers are powers of two
    assert model.emb._forward_hooks  # the original keeps its multipliers


def test_export_refuses_what_no_single_weight_holds() -> None:
    model, _ = _net(0)
    scale_branches(model, ["mid"], 0.5)
    with pytest.raises(ConfigError, match=r"^mid: the multiplier 0.5 on the output of Linear"):
        export_folded(model)

    class Tied(Net):
        def __init__(self, w: int) -> None:
            super().__init__(w)
            self.head.weight = self.emb.weight

    torch.manual_seed(0)
    tied = Tied(64)
    roles = roles_from_factory(Tied, 64, 16, tied="input")
    parameterize(tied, roles, make_rule("mup", "adam"), lr=1e-2)
    assert torch.equal(export_folded(tied)(tokens(1)), tied(tokens(1)))  # one multiplier: folds
    tied.head._forward_hooks[next(iter(tied.head._forward_hooks))].mult = 0.25
    with pytest.raises(ConfigError, match=r"emb.weight \(x2\) and head.weight \(x0.25\) share"):
        export_folded(tied)


class Tokens(nn.Module):
    """A ViT-like embedding: a bare class token and position table (input role under muP:
    multiplier m^1/2, read through `ScaleParam`), then a readout."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, w))
        self.pos_embed = nn.Parameter(torch.randn(1, 4, w))
        self.head = nn.Linear(w, 3)

    def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(x_BxTxD).all():
            raise ValueError("non-finite input")
        cls = self.cls_token.expand(x_BxTxD.shape[0], -1, -1)
        return self.head(torch.cat([cls, x_BxTxD + self.pos_embed], dim=1))


def test_bare_parameters_take_multipliers_that_pickle_and_fold() -> None:
    torch.manual_seed(0)
    model = Tokens(64)
    roles = roles_from_factory(
        Tokens, 64, 16, overrides={"cls_token": "input", "pos_embed": "input"}
    )
    par = parameterize(model, roles, make_rule("mup", "adam"), lr=1e-2)
    assert par.table["pos_embed"].multiplier == 2.0
    x = torch.randn(2, 4, 64)
    cls = (2.0 * model.cls_token).expand(2, -1, -1)
    h = torch.cat([cls, x + 2.0 * model.pos_embed], dim=1)
    by_hand = nn.functional.linear(0.5 * h, model.head.weight, model.head.bias)  # readout m^-1/2
    torch.testing.assert_close(model(x), by_hand, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="non-finite"):
        model(torch.full((2, 4, 64), float("nan")))
    assert isinstance(model._parameters["pos_embed"], nn.Parameter)  # restored after a raise
    buf = io.BytesIO()
    torch.save(model, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert torch.equal(loaded(x), model(x))
    assert set(loaded.state_dict()) == {"cls_token", "pos_embed", "head.weight", "head.bias"}
    plain = export_folded(model)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in plain.modules())
    assert torch.equal(plain(x), model(x))  # powers of two


def test_rnn_weights_need_the_folded_form() -> None:
    class LM(nn.Module):
        def __init__(self, w: int) -> None:
            super().__init__()
            self.rnn = nn.GRU(8, w, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    roles = roles_from_factory(LM, 64, 16)
    with pytest.raises(ConfigError, match=r"^rnn.weight_ih_l0: no forward multiplier for GRU"):
        parameterize(LM(64), roles, make_rule("mup", "adam"), lr=1e-2)  # mup input: m^1/2
    parameterize(LM(64), roles, make_rule("mup", "adam"), lr=1e-2, form="folded")
