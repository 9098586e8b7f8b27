"""A per-token (bigram) MLP language model for quick checks.

Each token's logits depend only on that token: embedding -> depth x (Linear + GeLU) -> head.
The hidden layers keep their biases on purpose, so the parameterization engine's vector role
is exercised. No width-scaling logic; PyTorch's default init is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Bigram MLP: idx (B, T) -> logits (B, T, vocab_size).

    Parameter names: tok_embed.weight, layers.{i}.weight, layers.{i}.bias, head.weight.
    """

    def __init__(self, vocab_size: int, width: int, depth: int) -> None:
        super().__init__()
        self.tok_embed = nn.Embedding(vocab_size, width)
        self.layers = nn.ModuleList(nn.Linear(width, width, bias=True) for _ in range(depth))
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx_BxT: torch.Tensor) -> torch.Tensor:
        x_BxTxD = self.tok_embed(idx_BxT)
        for layer in self.layers:
            x_BxTxD = F.gelu(layer(x_BxTxD))
        return self.head(x_BxTxD).float()
