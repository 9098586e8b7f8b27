"""Model zoo: build_model(name, ...) -> torch.nn.Module.

Models take their multipliers and attention scale as arguments and contain no width-scaling
logic; hptransfer.param decides every factor and re-initializes the parameters.
"""

from __future__ import annotations

from typing import Any

from torch import nn

MODELS = ("nanodo", "mlp", "llama", "hf_gpt2", "hf_llama")


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
    kv_group: int = 1,
    **kw: Any,
) -> nn.Module:
    """Build the model called `name` (one of MODELS).

    kv_group (query heads per key/value head) applies to llama and hf_llama only. The
    Hugging Face models (hf_gpt2, hf_llama; the hf extra) take no residual_multiplier: depth
    multipliers reach them through forward hooks (param.depth_exponent).

    The mlp model is per-token and ignores seq_len, head_dim, attn_scale and
    residual_multiplier. Extra keyword arguments are passed to the model's constructor.
    Raises ValueError for an unknown name, or (nanodo) a width not divisible by head_dim.
    """
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is unknown; valid names: {', '.join(MODELS)}")
    if kv_group != 1 and name not in ("llama", "hf_llama"):
        raise ValueError(f"model.kv_group applies to llama and hf_llama, not {name}")
    if name == "llama":
        from hptransfer.models.llama import Llama

        return Llama(
            vocab_size=vocab_size,
            width=width,
            depth=depth,
            seq_len=seq_len,
            head_dim=head_dim,
            kv_group=kv_group,
            attn_scale=attn_scale,
            residual_multiplier=residual_multiplier,
            **kw,
        )
    if name.startswith("hf_"):
        from hptransfer.models.hf import build_hf

        if residual_multiplier != 1.0:
            raise ValueError(f"{name} takes no residual_multiplier; use param.depth_exponent")
        return build_hf(
            name,
            width=width,
            depth=depth,
            vocab_size=vocab_size,
            seq_len=seq_len,
            head_dim=head_dim,
            kv_group=kv_group,
            attn_scale=attn_scale,
            **kw,
        )
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
