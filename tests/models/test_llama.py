"""Tests for the Llama-style decoder (hptransfer.models.llama): roles with grouped-query
attention, GQA and rotary correctness, and the muP coordinate check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hptransfer.analysis.coord import coord_slopes
from hptransfer.config import ConfigError, RunConfig
from hptransfer.models import build_model
from hptransfer.models.llama import Llama, apply_rotary, ffn_dim, rotary_tables
from hptransfer.param.roles import roles_from_factory
from hptransfer.probes.coord import coord_check_config

V, T = 64, 16
CORPUS = Path(__file__).parents[1] / "data" / "golden_corpus.txt"


def llama(width: int = 32, kv_group: int = 1, **kw: object) -> Llama:
    torch.manual_seed(0)
    model = build_model(
        "llama", width=width, depth=2, vocab_size=V, seq_len=T, head_dim=8, kv_group=kv_group, **kw
    )
    assert isinstance(model, Llama)
    return model


def tokens(B: int = 2, seq: int = T) -> torch.Tensor:
    return torch.randint(0, V, (B, seq), generator=torch.Generator().manual_seed(1))


def test_roles_table_with_gqa_matches_the_hand_written_one() -> None:
    # width 128 / base 64, head_dim 16, kv_group 2: 8 query heads and 4 kv heads (4 and 2 at
    # base), so k and v are 64 x 128 (32 x 64 at base): both fans grow -> hidden, n = fan_in.
    # SwiGLU width: 8 * ceil(128 / 3) = 344 (176 at base), so down's width_mult is 344 / 176.
    roles = roles_from_factory(
        lambda w: build_model("llama", width=w, depth=1, seq_len=32, head_dim=16, kv_group=2),
        128,
        64,
    )
    expected = {
        "tok_embed.weight": ("input", (256, 128), 256, 128, 128, 64),
        "blocks.0.attn_norm.weight": ("vector", (128,), 128, 128, 128, 64),
        "blocks.0.attn.q.weight": ("hidden", (128, 128), 128, 128, 128, 64),
        "blocks.0.attn.k.weight": ("hidden", (64, 128), 128, 64, 128, 64),
        "blocks.0.attn.v.weight": ("hidden", (64, 128), 128, 64, 128, 64),
        "blocks.0.attn.o.weight": ("hidden", (128, 128), 128, 128, 128, 64),
        "blocks.0.mlp_norm.weight": ("vector", (128,), 128, 128, 128, 64),
        "blocks.0.mlp.gate.weight": ("hidden", (344, 128), 128, 344, 128, 64),
        "blocks.0.mlp.up.weight": ("hidden", (344, 128), 128, 344, 128, 64),
        "blocks.0.mlp.down.weight": ("hidden", (128, 344), 344, 128, 344, 176),
        "norm_f.weight": ("vector", (128,), 128, 128, 128, 64),
        "head.weight": ("output", (256, 128), 128, 256, 128, 64),
    }
    got = {e.name: (e.role, e.shape, e.fan_in, e.fan_out, e.n, e.n_base) for e in roles}
    assert got == expected
    assert roles["blocks.0.mlp.down.weight"].width_mult == pytest.approx(344 / 176)


def test_ffn_dim_is_eight_thirds_rounded_up_to_a_multiple_of_8() -> None:
    assert [ffn_dim(w) for w in (24, 64, 128, 4096)] == [64, 176, 344, 10928]


def test_output_shape_dtype_and_no_biases() -> None:
    model = llama(kv_group=2)
    logits = model(tokens(B=3))
    assert logits.shape == (3, T, V) and logits.dtype == torch.float32
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())
    assert model.head.weight is not model.tok_embed.weight  # untied


def test_causal() -> None:
    model = llama(kv_group=2)
    x = tokens(B=1)
    x2 = x.clone()
    x2[0, 5] = (x[0, 5] + 1) % V
    a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@torch.no_grad()
def test_gqa_equals_attention_with_each_kv_head_repeated() -> None:
    gqa, mha = llama(width=32, kv_group=2), llama(width=32, kv_group=1)
    assert gqa.blocks[0].attn.k.weight.shape == (16, 32)
    state = gqa.state_dict()
    for name, w in list(state.items()):
        if name.endswith(("attn.k.weight", "attn.v.weight")):  # (G*K, D) -> (G*2*K, D)
            state[name] = w.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
    mha.load_state_dict(state)
    x = tokens()
    torch.testing.assert_close(gqa(x), mha(x), rtol=1e-5, atol=1e-5)
    mha.blocks[0].attn.k.weight[8:16] += 1.0  # break the repetition: must show
    assert not torch.allclose(gqa(x), mha(x), atol=1e-3)


def test_rotary_scores_depend_on_relative_position_only() -> None:
    g = torch.Generator().manual_seed(0)
    cos, sin = rotary_tables(T, 8)
    q = torch.randn(8, generator=g).expand(1, 1, T, 8)  # the same vector at every position
    k = torch.randn(8, generator=g).expand(1, 1, T, 8)
    q_rot, k_rot = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    scores_TxT = (q_rot @ k_rot.transpose(-1, -2))[0, 0]
    torch.testing.assert_close(scores_TxT[1:, 1:], scores_TxT[:-1, :-1])
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))  # a rotation
    assert not torch.allclose(scores_TxT[0, 0], scores_TxT[3, 0])  # positions do matter


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        build_model("llama", width=30, depth=1, seq_len=T, head_dim=5)
    with pytest.raises(ValueError, match="kv_group"):
        build_model("llama", width=32, depth=1, seq_len=T, head_dim=8, kv_group=3)
    with pytest.raises(ValueError, match="exceeds"):
        llama()(tokens(seq=T + 1))
    with pytest.raises(ValueError, match="kv_group"):
        build_model("nanodo", width=32, depth=1, seq_len=T, head_dim=8, kv_group=2)
    base = RunConfig().replace(**{"model.name": "llama", "model.width": 64, "model.head_dim": 16})
    with pytest.raises(ConfigError, match="kv_group=3 does not divide the 4 heads"):
        base.replace(**{"model.kv_group": 3}).validate()
    with pytest.raises(ConfigError, match="head_dim=7 must be even"):
        base.replace(**{"model.head_dim": 7, "model.width": 63}).validate()
    with pytest.raises(ConfigError, match="applies to llama"):
        RunConfig().replace(**{"model.kv_group": 2}).validate()


COORD = {
    "model.name": "llama",
    "model.kv_group": 2,
    "model.depth": 2,
    "model.head_dim": 16,
    "param.base_width": 64,
    "train.batch_size": 8,
    "train.seq_len": 32,
    "optimizer.name": "adam",
    "optimizer.lr": 1e-2,
    "data.path": str(CORPUS),
}


def slopes_at_step5(**kw: object) -> dict[str, float]:
    cfg = RunConfig().replace(**{**COORD, **kw}).validate()
    s = coord_slopes(coord_check_config(cfg, [64, 128, 256, 512], steps=6))
    last = s[s.step == 5]
    return dict(zip(last.layer, last.slope))


def test_mup_coord_check_passes_on_llama_and_sp_fails_it() -> None:
    mup = slopes_at_step5(**{"param.name": "mup", "model.attn_scale": "linear"})
    assert len(mup) == 21  # embedding, 2 x (2 norms + 7 linears), final norm, head
    bad = {k: round(v, 3) for k, v in mup.items() if abs(v) > 0.2}
    assert not bad, f"muP layers whose activations scale with width: {bad}"
    sp = slopes_at_step5(**{"param.name": "sp", "param.lr_exponents": "global"})
    assert sp["head"] > 0.3 and sp["blocks.0.attn.k"] > 0.3  # GQA's k grows too
    assert max(sp.values()) > 1.0
