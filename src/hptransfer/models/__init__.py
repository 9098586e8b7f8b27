"""Model zoo: build_model(name, ...) -> torch.nn.Module.

Models take their multipliers and attention scale as arguments and contain no width-scaling
logic; hptransfer.param decides every factor and re-initializes the parameters.
"""

from __future__ import annotations

from typing import Any

from torch import nn

MODELS = ("nanodo", "mlp")


def build_model(
    name: str,
    *,
    width: int,
    depth: int,
    vocab_size: int = 256,
    seq_len: int,
    head_dim: int,
    attn_scale: str = "sqrt",
    residual_multiplier: float = 1.0,
    **kw: Any,
) -> nn.Module:
    """Build the model called `name` ("nanodo" or "mlp").

    The mlp model is per-token and ignores seq_len, head_dim, attn_scale and
    residual_multiplier. Extra keyword arguments are passed to the model's constructor.
    Raises ValueError for an unknown name, or (nanodo) a width not divisible by head_dim.
    """
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is unknown; valid names: {', '.join(MODELS)}")
    if name == "nanodo":
        from hptransfer.models.nanodo import NanoDO

        return NanoDO(
            vocab_size=vocab_size,
            width=width,
            depth=depth,
            seq_len=seq_len,
            head_dim=head_dim,
            attn_scale=attn_scale,
            residual_multiplier=residual_multiplier,
            **kw,
        )
    from hptransfer.models.mlp import MLP

    return MLP(vocab_size=vocab_size, width=width, depth=depth, **kw)
