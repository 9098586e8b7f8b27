"""Llama-style decoder: RMSNorm, SwiGLU MLP, rotary position embeddings, grouped-query attention.

Pre-norm blocks, no biases, an untied LM head and no positional table (positions enter through
the rotary rotation of q and k). Heads grow with width at a fixed head_dim, and so do the
key/value heads: there are heads / kv_group of them with the group size fixed across widths,
so the k and v projections (fan_out = kv_heads * head_dim) are hidden layers for the roles
engine, like q and o. As in nanodo, the model holds no width-scaling logic and keeps PyTorch's
default init; the attention scale and the residual multiplier come from outside.

Shape suffixes: B batch, T sequence, D width, H query heads, G kv heads, K head_dim, F MLP
width, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hptransfer.errors import ConfigError
from hptransfer.models.nanodo import attention_scale

ROPE_THETA = 10000.0
NORM_EPS = 1e-6


def ffn_dim(width: int) -> int:
    """SwiGLU hidden size: Llama's 8/3 * width (the parameter count of a 4x GeLU MLP), rounded
    up to a multiple of 8."""
    return 8 * -(-8 * width // 24)


def rotary_tables(seq_len: int, head_dim: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """cos and sin of the rotation angles, stacked: (2, T, K/2). Pair i of a head rotates by
    position * theta^(-2i/K)."""
    inv_freq_K2 = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles_TxK2 = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq_K2)
    return torch.stack((angles_TxK2.cos(), angles_TxK2.sin())).float()


def apply_rotary(x_BxHxTxK: torch.Tensor, cos_TxK2: torch.Tensor, sin_TxK2: torch.Tensor):
    """Rotate the pairs (x[i], x[i + K/2]) of every head by their position's angles."""
    x1, x2 = x_BxHxTxK.chunk(2, dim=-1)
    return torch.cat((x1 * cos_TxK2 - x2 * sin_TxK2, x1 * sin_TxK2 + x2 * cos_TxK2), dim=-1)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary q and k; no biases."""

    def __init__(self, width: int, head_dim: int, kv_group: int, scale: float) -> None:
        super().__init__()
        self.n_heads = width // head_dim
        if self.n_heads % kv_group:
            raise ConfigError(f"model.kv_group={kv_group} does not divide {self.n_heads} heads")
        self.n_kv_heads = self.n_heads // kv_group
        self.head_dim = head_dim
        self.scale = scale
        self.q = nn.Linear(width, self.n_heads * head_dim, bias=False)
        self.k = nn.Linear(width, self.n_kv_heads * head_dim, bias=False)
        self.v = nn.Linear(width, self.n_kv_heads * head_dim, bias=False)
        self.o = nn.Linear(self.n_heads * head_dim, width, bias=False)

    def forward(self, x_BxTxD: torch.Tensor, rope_2xTxK2: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BxTxD.shape
        cos_TxK2, sin_TxK2 = rope_2xTxK2[0, :T], rope_2xTxK2[1, :T]
        q_BxHxTxK = self.q(x_BxTxD).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k_BxGxTxK = self.k(x_BxTxD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v_BxGxTxK = self.v(x_BxTxD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q_BxHxTxK = apply_rotary(q_BxHxTxK, cos_TxK2, sin_TxK2).to(v_BxGxTxK.dtype)
        k_BxGxTxK = apply_rotary(k_BxGxTxK, cos_TxK2, sin_TxK2).to(v_BxGxTxK.dtype)
        y_BxHxTxK = F.scaled_dot_product_attention(
            q_BxHxTxK,
            k_BxGxTxK,
            v_BxGxTxK,
            is_causal=True,
            scale=self.scale,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.o(y_BxHxTxK.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), D -> F -> D, no biases."""

    def __init__(self, width: int) -> None:
        super().__init__()
        hidden = ffn_dim(width)
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x_BxTxD)) * self.up(x_BxTxD))


class Block(nn.Module):
    """Pre-RMSNorm residual block (depth multipliers: forward hooks, `param.depth_exponent`)."""

    def __init__(self, width: int, head_dim: int, kv_group: int, scale: float) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(width, eps=NORM_EPS)
        self.attn = Attention(width, head_dim, kv_group, scale)
        self.mlp_norm = nn.RMSNorm(width, eps=NORM_EPS)
        self.mlp = SwiGLU(width)

    def forward(self, x_BxTxD: torch.Tensor, rope_2xTxK2: torch.Tensor) -> torch.Tensor:
        x_BxTxD = x_BxTxD + self.attn(self.attn_norm(x_BxTxD), rope_2xTxK2)
        return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD))


class Llama(nn.Module):
    """Llama-style decoder: idx (B, T) -> float32 logits (B, T, vocab_size).

    Args:
        vocab_size: number of token ids.
        width: model dimension D; must be divisible by head_dim.
        depth: number of blocks.
        seq_len: maximum sequence length (size of the rotary tables); inputs may be shorter.
        head_dim: dimension per head (even); the number of query heads is width // head_dim.
        kv_group: query heads per key/value head (1 = multi-head attention).
        attn_scale: "sqrt" (1/sqrt(head_dim)) or "linear" (1/head_dim, muP).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        width: int,
        depth: int,
        seq_len: int,
        head_dim: int,
        kv_group: int = 1,
        attn_scale: str = "sqrt",
    ) -> None:
        super().__init__()
        if width % head_dim != 0:
            raise ConfigError(f"model.width={width} is not divisible by model.head_dim={head_dim}")
        if head_dim % 2:
            raise ConfigError(f"model.head_dim={head_dim} must be even for rotary embeddings")
        scale = attention_scale(attn_scale, head_dim)
        self.seq_len = seq_len
        self.tok_embed = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(Block(width, head_dim, kv_group, scale) for _ in range(depth))
        self.norm_f = nn.RMSNorm(width, eps=NORM_EPS)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.register_buffer("rope", rotary_tables(seq_len, head_dim), persistent=False)

    def forward(self, idx_BxT: torch.Tensor) -> torch.Tensor:
        T = idx_BxT.shape[1]
        if T > self.seq_len:
            raise ValueError(f"sequence length {T} exceeds model.seq_len={self.seq_len}")
        x_BxTxD = self.tok_embed(idx_BxT)
        for block in self.blocks:
            x_BxTxD = block(x_BxTxD, self.rope)
        logits_BxTxV = self.head(self.norm_f(x_BxTxD))
        return logits_BxTxV.float()
