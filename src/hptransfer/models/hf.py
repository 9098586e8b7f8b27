"""Hugging Face transformers models, parameterized without editing their code.

A transformers model is built from a config at any width, so the roles engine can compare two
widths like it does for the in-house models; nothing is downloaded (random init, no weights).
Three things are done to the built model, none of them an edit of transformers' source:

- GPT-2's ``Conv1D`` layers (a Linear stored transposed, (fan_in, fan_out)) are swapped for
  ``nn.Linear`` holding the transposed weight: the same function, but in the storage order the
  roles engine reads fans from and the forward-multiplier hooks know (`linearize_conv1d`).
- The attention softmax scale is set through the ``scaling`` attribute that transformers'
  attention modules pass to their attention kernels (`set_attention_scale`), which gives muP's
  1/head_dim. A model whose attention has no such attribute raises instead of ignoring it.
- For the trainer, `CausalLM` wraps the model as idx -> float32 logits.

Tied embeddings (GPT-2's lm_head is wte) show up in the roles table as one tensor under two
names with different roles; ``param.tied`` must say which rule the shared tensor follows.
What this module cannot change without editing transformers is listed in docs/hf.md.

    from transformers import BertConfig
    factory = width_factory(lambda w: BertConfig(hidden_size=w, ...), model_class=AutoModel,
                            wrap=False)
    roles = roles_from_factory(factory, width=512, base_width=128)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hptransfer.config import ConfigError
from hptransfer.models.llama import ffn_dim
from hptransfer.models.nanodo import attention_scale


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "model.name hf_gpt2 / hf_llama needs transformers: pip install 'hptransfer[hf]'"
        ) from None
    return transformers


class CausalLM(nn.Module):
    """A transformers causal LM as the trainer wants it: idx (B, T) -> float32 logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model

    def forward(self, idx_BxT: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=idx_BxT, use_cache=False).logits.float()


@torch.no_grad()
def linearize_conv1d(model: nn.Module) -> int:
    """Replace every transformers ``Conv1D`` (weight stored (in, out)) by an equivalent
    ``nn.Linear`` (weight (out, in)); returns how many were replaced."""
    from transformers.pytorch_utils import Conv1D

    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, Conv1D)
    ]
    for parent, name, conv in swaps:
        w = conv.weight
        linear = nn.Linear(conv.nx, conv.nf, bias=True, device=w.device, dtype=w.dtype)
        linear.weight.copy_(w.t())
        linear.bias.copy_(conv.bias)
        setattr(parent, name, linear)
    return len(swaps)


def set_attention_scale(model: nn.Module, attn_scale: str) -> int:
    """Set the softmax scale of every attention module (one with a float ``scaling`` and a
    ``head_dim`` or ``attention_head_size``, as transformers' GPT-2, Llama, BERT and most others
    have) to 1/sqrt(head_dim) ("sqrt") or 1/head_dim ("linear"). Returns how many modules were
    set; raises ConfigError if none, with the reason: no module has a ``scaling``, or those
    that have one give no head dimension (T5: ``scaling`` = 1.0, its 1/sqrt(d_kv) folded into
    the query init)."""
    count = 0
    headless = set()
    for module in model.modules():
        head_dim = getattr(module, "head_dim", None) or getattr(module, "attention_head_size", 0)
        if isinstance(getattr(module, "scaling", None), float):
            if head_dim:
                # nn.Module.__setattr__ is typed for tensors and modules; scaling is a float
                module.scaling = attention_scale(attn_scale, int(head_dim))  # type: ignore[assignment]
                count += 1
            else:
                headless.add(f"{type(module).__name__}.scaling = {module.scaling:g}")
    if count == 0:
        if headless:
            reason = (
                f"{', '.join(sorted(headless))} has no head_dim or attention_head_size, so the "
                "scale's head dimension is unknown (T5 folds 1/sqrt(d_kv) into its query init)"
            )
        else:
            reason = "no attention module has a float `scaling` attribute"
        raise ConfigError(
            f"model.attn_scale: {type(model).__name__}: {reason}; its attention scale cannot "
            "be set without editing its code"
        )
    return count


@torch.no_grad()
def export_pretrained(model: nn.Module) -> nn.Module:
    """A stock transformers model computing what the parameterized ``model`` (a transformers
    model or a `CausalLM`) computes, for ``save_pretrained`` and a plain ``from_pretrained``:
    multipliers folded into weights (`hptransfer.param.export.export_folded`), an attention
    scale set by `set_attention_scale` folded into the query projection (scores are linear in
    the queries; the module's ``scaling`` goes back to what its config builds) and GPT-2's
    ``Conv1D`` layers restored from `linearize_conv1d`. ``model`` is not changed.
    Raises ConfigError naming a module whose scale has no query projection to go into."""
    from transformers.pytorch_utils import Conv1D

    from hptransfer.param.export import export_folded

    out = export_folded(model.hf if isinstance(model, CausalLM) else model)
    with torch.device("meta"):
        stock = dict(type(out)(out.config).named_modules())
    for name, module in list(out.named_modules()):
        ref = stock.get(name)
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, float) and scaling != getattr(ref, "scaling", scaling):
            _scale_queries(name, module, scaling / ref.scaling)  # type: ignore[union-attr]
            module.scaling = ref.scaling  # type: ignore[union-attr,assignment]
        if isinstance(ref, Conv1D) and isinstance(module, nn.Linear):
            conv = Conv1D(module.out_features, module.in_features)
            conv.weight.data = module.weight.detach().t().contiguous()
            conv.bias.data = module.bias.detach().clone()
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent), child, conv)
    return out


def _scale_queries(name: str, attn: nn.Module, factor: float) -> None:
    """Multiply the queries of attention module ``attn`` by ``factor`` through its weights:
    ``q_norm``'s gain where the queries are normalized after the projection (Qwen3, OLMo2;
    checked to scale them, refused otherwise), else ``q_proj`` / ``query`` (weight and bias),
    else GPT-2's fused ``c_attn`` (its first ``embed_dim`` outputs)."""
    q_norm = getattr(attn, "q_norm", None)
    if q_norm is not None:
        weight = getattr(q_norm, "weight", None)
        if isinstance(weight, torch.Tensor):
            gen = torch.Generator(weight.device).manual_seed(0)
            x = torch.randn(4, weight.shape[-1], generator=gen, device=weight.device)
            x = x.to(weight.dtype)
            before = q_norm(x)
            weight.mul_(factor)
            if torch.allclose(q_norm(x), factor * before, rtol=1e-4, atol=0):
                return
            weight.div_(factor)  # a gain of another form, e.g. Gemma's (1 + weight)
        raise ConfigError(
            f"{name}: its attention scale was changed and its queries are normalized after the "
            "projection by a norm whose gain does not scale them; export a model built with "
            "model.attn_scale = sqrt"
        )
    proj = getattr(attn, "q_proj", None) or getattr(attn, "query", None)
    rows = slice(None)
    if proj is None and hasattr(attn, "c_attn") and hasattr(attn, "embed_dim"):
        proj, rows = attn.c_attn, slice(0, attn.embed_dim)
    if not isinstance(proj, nn.Linear):
        raise ConfigError(
            f"{name}: its attention scale was changed and it has no query projection (q_proj, "
            "query, c_attn) to fold it into; export a model built with model.attn_scale = sqrt"
        )
    proj.weight[rows].mul_(factor)
    if proj.bias is not None:
        proj.bias[rows].mul_(factor)


def width_factory(
    make_config: Callable[[int], Any],
    *,
    model_class: Any = None,
    attn_scale: str | None = None,
    wrap: bool = True,
) -> Callable[[int], nn.Module]:
    """A ``width -> model`` factory for `roles_from_factory` and `parameterize` from a
    ``width -> transformers config`` function.

    ``model_class`` defaults to AutoModelForCausalLM. ``attn_scale`` ("sqrt" / "linear") sets
    the attention scale; None keeps the model's own. ``wrap`` returns `CausalLM` (the
    trainer's contract); False returns the transformers model itself. GPT-2 style ``Conv1D``
    layers are always replaced by ``nn.Linear``.
    """
    tf = _transformers()
    cls = model_class or tf.AutoModelForCausalLM

    def make(width: int) -> nn.Module:
        config = make_config(width)
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
        linearize_conv1d(model)
        if attn_scale is not None:
            set_attention_scale(model, attn_scale)
        return CausalLM(model) if wrap else model

    return make


def gpt2_config(width: int, *, depth: int, vocab_size: int, seq_len: int, head_dim: int) -> Any:
    """GPT-2 (pre-LayerNorm, learned positions, 4x GeLU MLP with biases, tied head) at ``width``
    with width // head_dim heads and no dropout."""
    return _transformers().GPT2Config(
        vocab_size=vocab_size,
        n_positions=seq_len,
        n_embd=width,
        n_layer=depth,
        n_head=width // head_dim,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,  # GPT-2's 50256 lies outside a small vocabulary
        eos_token_id=None,
        use_cache=False,
    )


def llama_config(
    width: int, *, depth: int, vocab_size: int, seq_len: int, head_dim: int, kv_group: int = 1
) -> Any:
    """Llama at ``width``: the shape of hptransfer.models.llama (same SwiGLU size, untied head,
    no biases), with (width // head_dim) / kv_group key/value heads."""
    heads = width // head_dim
    return _transformers().LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=ffn_dim(width),
        num_hidden_layers=depth,
        num_attention_heads=heads,
        num_key_value_heads=heads // kv_group,
        head_dim=head_dim,
        max_position_embeddings=seq_len,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_cache=False,
    )


def build_hf(
    name: str,
    *,
    width: int,
    depth: int,
    vocab_size: int,
    seq_len: int,
    head_dim: int,
    kv_group: int = 1,
    attn_scale: str = "sqrt",
) -> nn.Module:
    """``model.name`` hf_gpt2 or hf_llama at ``width``, wrapped as `CausalLM`."""
    shape = dict(depth=depth, vocab_size=vocab_size, seq_len=seq_len, head_dim=head_dim)
    if name == "hf_gpt2":  # build_model has checked the name and kv_group
        make_config = lambda w: gpt2_config(w, **shape)  # noqa: E731
    else:
        make_config = lambda w: llama_config(w, kv_group=kv_group, **shape)  # noqa: E731
    return width_factory(make_config, attn_scale=attn_scale)(width)
