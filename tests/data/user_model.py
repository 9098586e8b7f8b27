"""A user's own models, outside the package: what tests/test_factory.py runs through
``model.factory = "tests/data/user_model.py:make_lm"`` (the path form) and the Python API."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyLM(nn.Module):
    """Token ids (B, T) -> logits (B, T, V): an embedding, ``depth`` residual MLP blocks with a
    causal running mean over positions (so a token sees its past), a norm and a readout."""

    def __init__(self, width: int, depth: int, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, x_BxT: torch.Tensor) -> torch.Tensor:
        h = self.embed(x_BxT)
        steps = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)[:, None]
        for block in self.blocks:
            h = h + block(h.cumsum(1) / steps)
        return self.head(self.norm(h))


def make_lm(width: int, *, depth: int = 1, vocab_size: int = 256) -> nn.Module:
    return TinyLM(width, depth, vocab_size)


def make_regressor(width: int) -> nn.Module:
    """An MLP on 16 features (no tokens): needs the model.batch and model.loss hooks."""
    return nn.Sequential(
        nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
    )


def regression_batch(step: int, *, batch_size: int, seed: int, split: str):
    """(features (B, 16), targets (B,)): a fixed random linear target, fresh inputs per step."""
    g = torch.Generator().manual_seed(2 * (1000 * seed + step) + (split == "eval"))
    x = torch.randn(batch_size, 16, generator=g)
    w = torch.linspace(-1, 1, 16)
    return x, x @ w


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x).squeeze(-1), y)


NOT_CALLABLE = 3
