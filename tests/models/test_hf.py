"""Tests for Hugging Face transformers models (hptransfer.models.hf; the hf extra): roles from
two widths, the Conv1D swap, tied embeddings, the attention-scale switch, training."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import transformers  # noqa: E402

from hptransfer.config import RunConfig  # noqa: E402
from hptransfer.models import build_model  # noqa: E402
from hptransfer.models.hf import (  # noqa: E402
    CausalLM,
    gpt2_config,
    linearize_conv1d,
    set_attention_scale,
    width_factory,
)
from hptransfer.param.apply import parameterize  # noqa: E402
from hptransfer.param.roles import roles_from_factory  # noqa: E402
from hptransfer.param.rules import make_rule  # noqa: E402
from hptransfer.train import train  # noqa: E402

CORPUS = Path(__file__).parents[1] / "data" / "golden_corpus.txt"
V, T = 64, 16
SHAPE = dict(depth=2, vocab_size=V, seq_len=T, head_dim=8)


def tokens(B: int = 2) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


def built(name: str, width: int = 32, seed: int = 0, **kw: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, width=width, **SHAPE, **kw)


@pytest.mark.parametrize(
    ("name", "extra"), [("hf_gpt2", {"param.tied": "untie"}), ("hf_llama", {"model.kv_group": 2})]
)
def test_tiny_hf_models_are_parameterized_and_train(name: str, extra: dict) -> None:
    cfg = (
        RunConfig()
        .replace(
            **{
                "model.name": name,
                "model.width": 64,
                "model.head_dim": 16,
                "model.depth": 1,
                "model.attn_scale": "linear",
                "param.base_width": 32,
                "optimizer.lr": 1e-2,
                "train.steps": 20,
                "train.batch_size": 4,
                "train.seq_len": 32,
                "train.eval_every": 10,
                "train.eval_batches": 2,
                "train.warmup_steps": 2,
                "data.path": str(CORPUS),
                **extra,
            }
        )
        .validate()
    )
    s = train(cfg)
    assert s["status"] == "ok" and s["steps"] == 20
    losses = s["losses"]
    assert sum(losses[-3:]) / 3 < 0.75 * losses[0], losses
    assert math.isfinite(s["final_eval_loss"]) and s["final_eval_loss"] < 0.75 * losses[0]


def test_gpt2_roles_read_through_the_conv1d_swap_and_the_tie() -> None:
    def gpt2(w: int) -> torch.nn.Module:
        return build_model("hf_gpt2", width=w, **SHAPE)

    roles = roles_from_factory(gpt2, 64, 32, tied="untie")
    got = {e.name: (e.role, e.fan_in, e.fan_out, e.width_mult) for e in roles}
    h = "hf.transformer.h.0"
    assert got[f"{h}.attn.c_attn.weight"] == ("hidden", 64, 192, 2.0)  # fused q, k, v
    assert got[f"{h}.attn.c_attn.bias"] == ("vector", 192, 192, 2.0)
    assert got[f"{h}.mlp.c_fc.weight"] == ("hidden", 64, 256, 2.0)
    assert got[f"{h}.mlp.c_proj.weight"] == ("hidden", 256, 64, 2.0)
    assert got["hf.transformer.wte.weight"] == ("input", V, 64, 2.0)
    assert got["hf.transformer.wpe.weight"] == ("input", T, 64, 2.0)
    assert got["hf.lm_head.weight"] == ("output", 64, V, 2.0)
    assert roles["hf.lm_head.weight"].tied_to == "hf.transformer.wte.weight"
    with pytest.raises(ValueError, match="set param.tied to input, output or untie"):
        roles_from_factory(gpt2, 64, 32)


@torch.no_grad()
def test_conv1d_swap_keeps_the_function() -> None:
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(gpt2_config(32, **SHAPE)).eval()
    swapped = copy.deepcopy(model)
    assert linearize_conv1d(swapped) == 4 * 2  # c_attn, attn c_proj, c_fc, mlp c_proj per block
    assert isinstance(swapped.transformer.h[0].mlp.c_fc, torch.nn.Linear)
    x = tokens()
    torch.testing.assert_close(swapped(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_gpt2_linear_attention_scale_equals_queries_scaled_by_one_over_sqrt_head_dim() -> None:
    # q.k / K = (q / sqrt K).k / sqrt K: the switch must act like shrinking the queries
    lin, sq = built("hf_gpt2", attn_scale="linear").eval(), built("hf_gpt2").eval()
    for block in lin.hf.transformer.h:
        block.attn.c_attn.weight *= 20  # GPT-2's 0.02 init leaves attention nearly uniform
    state = {k: v.clone() for k, v in lin.state_dict().items()}
    for name in [n for n in state if n.endswith("attn.c_attn.weight")]:
        state[name][:32] /= math.sqrt(8)  # rows 0..D-1 of the fused (3D, D) weight are q
        state[name.replace("weight", "bias")][:32] /= math.sqrt(8)
    sq.load_state_dict(state)
    x = tokens()
    torch.testing.assert_close(lin(x), sq(x), rtol=1e-5, atol=1e-5)
    sq.load_state_dict(lin.state_dict())  # same weights, other scale: must differ
    assert not torch.allclose(lin(x), sq(x), atol=1e-3)


@pytest.mark.parametrize("attn_scale", ["sqrt", "linear"])
@torch.no_grad()
def test_llama_is_transformers_llama(attn_scale: str) -> None:
    """Our llama and transformers' with the same weights give the same logits (GQA, rotary,
    RMSNorm, SwiGLU), so the in-house model is a faithful Llama, and the scale switch acts."""
    ours = built("llama", kv_group=2, attn_scale=attn_scale)
    theirs = built("hf_llama", kv_group=2, attn_scale=attn_scale).eval()
    names = {
        "tok_embed": "model.embed_tokens",
        "norm_f": "model.norm",
        "head": "lm_head",
        "blocks": "model.layers",
        "attn_norm": "input_layernorm",
        "mlp_norm": "post_attention_layernorm",
        "attn.q": "self_attn.q_proj",
        "attn.k": "self_attn.k_proj",
        "attn.v": "self_attn.v_proj",
        "attn.o": "self_attn.o_proj",
        "mlp.gate": "mlp.gate_proj",
        "mlp.up": "mlp.up_proj",
        "mlp.down": "mlp.down_proj",
    }
    state = {}
    for name, w in ours.state_dict().items():
        for a, b in names.items():
            name = name.replace(a, b)
        state[name] = w
    theirs.hf.load_state_dict(state)
    x = tokens()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    other = built("llama", kv_group=2, attn_scale="linear" if attn_scale == "sqrt" else "sqrt")
    other.load_state_dict(ours.state_dict())
    assert not torch.allclose(other(x), theirs(x), atol=1e-3)


def test_set_attention_scale_refuses_a_model_without_one() -> None:
    with pytest.raises(ValueError, match="cannot be set without editing its code"):
        set_attention_scale(torch.nn.Linear(4, 4), "linear")


def test_any_transformers_model_through_width_factory() -> None:
    def qwen2(w: int) -> transformers.PretrainedConfig:
        return transformers.Qwen2Config(
            vocab_size=V,
            hidden_size=w,
            intermediate_size=3 * w,
            num_hidden_layers=1,
            num_attention_heads=w // 8,
            num_key_value_heads=w // 16,
            max_position_embeddings=T,
        )

    factory = width_factory(qwen2, attn_scale="linear")
    roles = roles_from_factory(factory, 64, 32)
    attn = "hf.model.layers.0.self_attn"
    assert roles[f"{attn}.k_proj.weight"].role == "hidden"  # 4 kv heads at 64, 2 at 32
    assert roles[f"{attn}.q_proj.bias"].role == "vector"
    assert roles["hf.lm_head.weight"].role == "output"
    assert roles["hf.model.embed_tokens.weight"].role == "input"
    torch.manual_seed(0)
    model = factory(64)
    assert isinstance(model, CausalLM)
    par = parameterize(model, roles, make_rule("mup", "adam", "full"), lr=1e-2)
    assert {g["role"] for g in par.param_groups} == {"input", "hidden", "output", "vector"}
    model(tokens()).sum().backward()
    assert model.hf.model.layers[0].self_attn.scaling == 1 / 8

    def bert(w: int) -> transformers.PretrainedConfig:
        return transformers.BertConfig(
            vocab_size=V,
            hidden_size=w,
            num_hidden_layers=2,
            num_attention_heads=w // 8,
            intermediate_size=4 * w,
            max_position_embeddings=T,
        )

    encoder = width_factory(bert, model_class=transformers.AutoModel, wrap=False)
    roles = roles_from_factory(encoder, 64, 32)
    assert roles["embeddings.token_type_embeddings.weight"].role == "input"
    assert roles["encoder.layer.1.attention.self.query.weight"].role == "hidden"
    assert roles["pooler.dense.weight"].role == "hidden"
    assert set_attention_scale(encoder(32), "linear") == 2
