"""NanoDO: the decoder-only transformer of Everett et al. 2024 (google-deepmind/nanodo).

Pre-LayerNorm blocks without biases, separate q/k/v/o projections, a 4x GeLU MLP,
learned positional embeddings and an untied LM head. Heads grow with width at a fixed
head_dim. The model holds no width-scaling logic and keeps PyTorch's default init: the
parameterization engine (hptransfer.param) re-initializes every parameter and decides
every factor. The only knobs it takes from outside are the attention scale and a
residual-branch multiplier (training scales depth with forward hooks instead,
`param.depth_exponent`; the argument is the reference those hooks are tested against).

Shape suffixes: B batch, T sequence, D width, H heads, K head_dim, F MLP width, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hptransfer.config import ATTN_SCALES
from hptransfer.errors import ConfigError


def attention_scale(attn_scale: str, head_dim: int) -> float:
    """Softmax temperature: 1/sqrt(head_dim) ("sqrt", standard) or 1/head_dim ("linear", muP)."""
    if attn_scale == "sqrt":
        return 1.0 / math.sqrt(head_dim)
    if attn_scale == "linear":
        return 1.0 / head_dim
    raise ConfigError(f"model.attn_scale={attn_scale!r} is not one of {', '.join(ATTN_SCALES)}")


class Attention(nn.Module):
    """Causal multi-head self-attention with separate bias-free q, k, v, o projections."""

    def __init__(self, width: int, head_dim: int, scale: float) -> None:
        super().__init__()
        self.n_heads = width // head_dim
        self.head_dim = head_dim
        self.scale = scale
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.o = nn.Linear(width, width, bias=False)

    def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BxTxD.shape
        device = x_BxTxD.device.type
        if torch.is_autocast_enabled(device):
            # autocast casts only parameters once per forward: cast the input of q, k, v once
            # here, not once per projection (forward values unchanged; the three projections'
            # input gradients then add in the autocast dtype)
            x_BxTxD = x_BxTxD.to(torch.get_autocast_dtype(device))

        def heads(y_BxTxD: torch.Tensor) -> torch.Tensor:
            return y_BxTxD.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

        q_BxHxTxK = heads(self.q(x_BxTxD))
        k_BxHxTxK = heads(self.k(x_BxTxD))
        v_BxHxTxK = heads(self.v(x_BxTxD))
        y_BxHxTxK = F.scaled_dot_product_attention(
            q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, is_causal=True, scale=self.scale
        )
        y_BxTxD = y_BxHxTxK.transpose(1, 2).reshape(B, T, D)
        return self.o(y_BxTxD)


class Mlp(nn.Module):
    """Position-wise feed-forward: D -> 4D -> GeLU -> D, no biases."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(width, 4 * width, bias=False)
        self.fc_out = nn.Linear(4 * width, width, bias=False)

    def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
        h_BxTxF = F.gelu(self.fc_in(x_BxTxD))
        return self.fc_out(h_BxTxF)


class Block(nn.Module):
    """Pre-LN residual block; both branches are scaled by residual_multiplier."""

    def __init__(self, width: int, head_dim: int, scale: float, residual_multiplier: float) -> None:
        super().__init__()
        self.residual_multiplier = residual_multiplier
        self.ln1 = nn.LayerNorm(width, bias=False)
        self.attn = Attention(width, head_dim, scale)
        self.ln2 = nn.LayerNorm(width, bias=False)
        self.mlp = Mlp(width)

    def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
        x_BxTxD = x_BxTxD + self.scaled(self.attn(self.ln1(x_BxTxD)))
        return x_BxTxD + self.scaled(self.mlp(self.ln2(x_BxTxD)))

    def scaled(self, branch_BxTxD: torch.Tensor) -> torch.Tensor:
        """residual_multiplier * branch; at 1.0 the branch itself (the same bits, one
        elementwise pass fewer forward and backward)."""
        if self.residual_multiplier == 1.0:
            return branch_BxTxD
        return self.residual_multiplier * branch_BxTxD


class NanoDO(nn.Module):
    """Decoder-only transformer: idx (B, T) -> float32 logits (B, T, vocab_size).

    Args:
        vocab_size: number of token ids.
        width: model dimension D; must be divisible by head_dim.
        depth: number of blocks.
        seq_len: maximum sequence length (size of the positional table); inputs may be shorter.
        head_dim: dimension per head; the number of heads is width // head_dim.
        attn_scale: "sqrt" (1/sqrt(head_dim)) or "linear" (1/head_dim, muP).
        residual_multiplier: factor on every residual branch (1.0 = plain).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        width: int,
        depth: int,
        seq_len: int,
        head_dim: int,
        attn_scale: str = "sqrt",
        residual_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        if width % head_dim != 0:
            raise ConfigError(f"model.width={width} is not divisible by model.head_dim={head_dim}")
        scale = attention_scale(attn_scale, head_dim)
        self.seq_len = seq_len
        self.tok_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(
            Block(width, head_dim, scale, residual_multiplier) for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx_BxT: torch.Tensor) -> torch.Tensor:
        T = idx_BxT.shape[1]
        if T > self.seq_len:
            raise ValueError(f"sequence length {T} exceeds model.seq_len={self.seq_len}")
        pos_T = torch.arange(T, device=idx_BxT.device)
        x_BxTxD = self.tok_embed(idx_BxT) + self.pos_embed(pos_T)
        for block in self.blocks:
            x_BxTxD = block(x_BxTxD)
        logits_BxTxV = self.head(self.ln_f(x_BxTxD))
        return logits_BxTxV.float()
