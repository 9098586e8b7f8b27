"""Tests for the NanoDO decoder (hptransfer.models.nanodo) and build_model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hptransfer.models import MODELS, build_model
from hptransfer.models.nanodo import NanoDO

V, T = 32, 8


def tiny(width: int = 16, depth: int = 2, **kw: object) -> NanoDO:
    torch.manual_seed(0)
    model = build_model(
        "nanodo", width=width, depth=depth, vocab_size=V, seq_len=T, head_dim=4, **kw
    )
    assert isinstance(model, NanoDO)
    return model


def tokens(B: int = 2, seq: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, seq), generator=torch.Generator().manual_seed(seed))


def expected_names(depth: int) -> set[str]:
    names = {"tok_embed.weight", "pos_embed.weight", "ln_f.weight", "head.weight"}
    for i in range(depth):
        for sub in (
            "ln1",
            "attn.q",
            "attn.k",
            "attn.v",
            "attn.o",
            "ln2",
            "mlp.fc_in",
            "mlp.fc_out",
        ):
            names.add(f"blocks.{i}.{sub}.weight")
    return names


def test_output_shape_and_dtype() -> None:
    logits = tiny()(tokens(B=3))
    assert logits.shape == (3, T, V)
    assert logits.dtype == torch.float32


def test_shorter_sequence_than_seq_len() -> None:
    assert tiny()(tokens(seq=T - 3)).shape == (2, T - 3, V)


def test_logits_float32_under_autocast() -> None:
    model = tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(tokens()).dtype == torch.float32


def test_causal() -> None:
    model = tiny()
    x = tokens(B=1)
    t = 5
    x2 = x.clone()
    x2[0, t] = (x[0, t] + 1) % V
    a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("width", [16, 32])
def test_heads_grow_with_width(width: int) -> None:
    model = tiny(width=width)
    for block in model.blocks:
        assert block.attn.n_heads == width // 4
        assert block.attn.head_dim == 4


@pytest.mark.parametrize("width", [16, 32])
def test_parameter_names_and_shapes(width: int) -> None:
    model = tiny(width=width, depth=3)
    params = dict(model.named_parameters())
    assert set(params) == expected_names(3)
    D = width
    assert params["tok_embed.weight"].shape == (V, D)
    assert params["pos_embed.weight"].shape == (T, D)
    assert params["blocks.0.attn.q.weight"].shape == (D, D)
    assert params["blocks.0.mlp.fc_in.weight"].shape == (4 * D, D)
    assert params["blocks.0.mlp.fc_out.weight"].shape == (D, 4 * D)
    assert params["head.weight"].shape == (V, D)


def test_no_biases() -> None:
    assert not any("bias" in n for n, _ in tiny().named_parameters())


def test_attn_scale_linear_differs_from_sqrt() -> None:
    x = tokens()
    sqrt_model, linear_model = tiny(attn_scale="sqrt"), tiny(attn_scale="linear")
    linear_model.load_state_dict(sqrt_model.state_dict())
    assert not torch.allclose(sqrt_model(x), linear_model(x))


def test_attn_scale_values() -> None:
    assert tiny(attn_scale="sqrt").blocks[0].attn.scale == pytest.approx(0.5)
    assert tiny(attn_scale="linear").blocks[0].attn.scale == pytest.approx(0.25)
    with pytest.raises(ValueError, match="attn_scale"):
        tiny(attn_scale="cubic")


def test_residual_multiplier_zero_ignores_blocks() -> None:
    model = tiny(residual_multiplier=0.0)
    x = tokens()
    before = model(x)
    with torch.no_grad():
        for p in model.blocks.parameters():
            p.normal_()
    torch.testing.assert_close(model(x), before)
    # and with the default multiplier the same perturbation does matter
    plain = tiny()
    before = plain(x)
    with torch.no_grad():
        for p in plain.blocks.parameters():
            p.normal_()
    assert not torch.allclose(plain(x), before)


def test_width_not_divisible_by_head_dim() -> None:
    with pytest.raises(ValueError) as err:
        build_model("nanodo", width=18, depth=1, seq_len=T, head_dim=4)
    assert str(err.value) == "model.width=18 is not divisible by model.head_dim=4"


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError) as err:
        build_model("gpt5", width=16, depth=1, seq_len=T, head_dim=4)
    msg = str(err.value)
    assert "\n" not in msg and all(name in msg for name in MODELS)


def test_overfits_one_batch() -> None:
    model = tiny(width=32)
    x = tokens(B=4, seq=T + 1, seed=3)
    x, y = x[:, :-1], x[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
