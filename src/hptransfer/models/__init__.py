"""Model zoo: build_model(name, ...) -> torch.nn.Module.

Models take their multipliers and attention scale as arguments and contain no width-scaling
logic; hptransfer.param decides every factor and re-initializes the parameters.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hptransfer.config import MODELS
from hptransfer.errors import ConfigError


def hidden_depth(name: str, depth: int) -> int:
    """Hidden (width x width) layers a signal passes through in series from the embedding to
    the readout, the chain length the LR-exponent solver models (`param.rules.solve_c`): one per
    layer of the mlp; four per transformer block (attention's value and output projections,
    the MLP's two matrices)."""
    return depth if name == "mlp" else 4 * depth


def build_model(
    name: str,
    *,
    width: int,
    depth: int,
    vocab_size: int = 256,
    seq_len: int,
    head_dim: int,
    attn_scale: str = "sqrt",
    kv_group: int = 1,
    **kw: Any,
) -> nn.Module:
    """Build the model called `name` (one of MODELS).

    kv_group (query heads per key/value head) applies to llama and hf_llama only. Depth
    multipliers reach every model through forward hooks (param.depth_exponent); nanodo also
    takes ``residual_multiplier=`` itself, the reference those hooks are tested against.

    The mlp model is per-token and ignores seq_len, head_dim and attn_scale. Extra keyword
    arguments are passed to the model's constructor. Raises ConfigError for an unknown name,
    or (nanodo, llama) a width not divisible by head_dim.
    """
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is unknown; valid names: {', '.join(MODELS)}")
    if kv_group != 1 and name not in ("llama", "hf_llama"):
        raise ConfigError(f"model.kv_group applies to llama and hf_llama, not {name}")
    shape: dict[str, Any] = dict(vocab_size=vocab_size, width=width, depth=depth, seq_len=seq_len)
    shape.update(head_dim=head_dim, attn_scale=attn_scale)
    if name.startswith("hf_"):
        from hptransfer.models.hf import build_hf

        return build_hf(name, kv_group=kv_group, **shape, **kw)
    if name == "llama":
        from hptransfer.models.llama import Llama

        return Llama(kv_group=kv_group, **shape, **kw)
    if name == "nanodo":
        from hptransfer.models.nanodo import NanoDO

        return NanoDO(**shape, **kw)
    from hptransfer.models.mlp import MLP

    return MLP(vocab_size=vocab_size, width=width, depth=depth, **kw)
