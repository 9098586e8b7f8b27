"""Tests for the bigram MLP (hptransfer.models.mlp)."""

from __future__ import annotations

import torch

from hptransfer.models import build_model
from hptransfer.models.mlp import MLP


def test_shapes() -> None:
    model = build_model("mlp", width=16, depth=2, vocab_size=32, seq_len=8, head_dim=4)
    assert isinstance(model, MLP)
    logits = model(torch.randint(0, 32, (3, 8)))
    assert logits.shape == (3, 8, 32)
    assert logits.dtype == torch.float32


def test_width_need_not_divide_head_dim() -> None:
    assert isinstance(build_model("mlp", width=20, depth=1, seq_len=8, head_dim=64), MLP)


def test_names_and_biases() -> None:
    params = dict(MLP(vocab_size=32, width=16, depth=3).named_parameters())
    expected = {"tok_embed.weight", "head.weight"}
    for i in range(3):
        expected |= {f"layers.{i}.weight", f"layers.{i}.bias"}
    assert set(params) == expected
    assert params["layers.0.weight"].shape == (16, 16)
    assert params["layers.2.bias"].shape == (16,)
    assert params["head.weight"].shape == (32, 16)


def test_per_token() -> None:
    model = MLP(vocab_size=32, width=16, depth=2)
    x = torch.randint(0, 32, (1, 6))
    x2 = x.clone()
    x2[0, 3] = (x[0, 3] + 1) % 32
    a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    torch.testing.assert_close(a[:, 4:], b[:, 4:])
    assert not torch.allclose(a[:, 3], b[:, 3])
