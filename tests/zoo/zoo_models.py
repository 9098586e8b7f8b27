"""The model zoo: architectures people train, built from configs with random init, tiny and
offline (issue 12's acceptance). Each `Arch` gives a ``width -> model`` factory, one batch, the
loss on it and the roles settings the model needs (tied embeddings, nothing else: every other
role comes from how the parameter is used).

Widths: heads grow with width at a fixed head dim of 8, MLPs are 2x (Mixtral's experts 2x,
ConvNeXt's own 4x), one block per stack. Language models read real text (the bytes of this
file, vocab 256); vision models read a fixed random image batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

VOCAB, SEQ, BATCH, LABELS = 256, 8, 16, 10


def text_batch() -> torch.Tensor:
    """(BATCH, SEQ + 1) byte tokens of real text: consecutive windows of this file."""
    raw = torch.tensor(list(Path(__file__).read_bytes()[: BATCH * (SEQ + 1)]), dtype=torch.long)
    return raw.view(BATCH, SEQ + 1)


def image_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(8, 3, 16, 16, generator=g), torch.randint(LABELS, (8,), generator=g)


@dataclass
class Arch:
    name: str
    make: Callable[[int], nn.Module]
    example: Callable[[], Any]
    """The forward pass's input (as `roles_from_factory`'s ``example``)."""
    loss: Callable[[nn.Module], torch.Tensor]
    tied: str = "error"
    overrides: dict[str, str] = field(default_factory=dict)


def _tf() -> Any:
    return pytest.importorskip("transformers")


def _causal(make: Callable[[int], Any]) -> tuple[Callable[[int], nn.Module], Callable, Callable]:
    """A transformers causal LM from a width -> config function."""

    def build(w: int) -> nn.Module:
        return _tf().AutoModelForCausalLM.from_config(make(w))

    def loss(model: nn.Module) -> torch.Tensor:
        x = text_batch()
        logits = model(input_ids=x[:, :-1], use_cache=False).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())

    return build, lambda: {"input_ids": text_batch()[:, :-1], "use_cache": False}, loss


def _seq2seq(make: Callable[[int], Any]) -> tuple[Callable[[int], nn.Module], Callable, Callable]:
    """A transformers encoder-decoder (T5, BART): the text in, the same text shifted out."""

    def build(w: int) -> nn.Module:
        return _tf().AutoModelForSeq2SeqLM.from_config(make(w))

    def inputs() -> dict[str, Any]:
        x = text_batch()
        return {"input_ids": x[:, 1:], "decoder_input_ids": x[:, :-1], "use_cache": False}

    def loss(model: nn.Module) -> torch.Tensor:
        logits = model(**inputs()).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), text_batch()[:, 1:].flatten())

    return build, inputs, loss


def _image(make: Callable[[int], Any], cls: str) -> tuple[Callable, Callable, Callable]:
    def build(w: int) -> nn.Module:
        return getattr(_tf(), cls)(make(w))

    def loss(model: nn.Module) -> torch.Tensor:
        x, y = image_batch()
        return F.cross_entropy(model(pixel_values=x).logits, y)

    return build, lambda: {"pixel_values": image_batch()[0]}, loss


def _lm_loss(model: nn.Module) -> torch.Tensor:
    x = text_batch()
    return F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())


class EncoderLM(nn.Module):
    """nn.TransformerEncoder LM with a learned position table as a bare parameter."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, w)
        self.pos = nn.Parameter(torch.zeros(1, 16, w))
        layer = nn.TransformerEncoderLayer(w, w // 8, 2 * w, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(w, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        h = self.embed(x) + self.pos[:, : x.shape[1]]
        return self.head(self.encoder(h, mask=mask, is_causal=True))


class RecurrentLM(nn.Module):
    def __init__(self, w: int, cell: type[nn.RNNBase] = nn.LSTM) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, w)
        self.rnn = cell(w, w, batch_first=True)
        self.head = nn.Linear(w, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(x))[0])


class ConvLM(nn.Module):
    """Causal Conv1d LM: two kernel-3 convolutions over the embedded sequence."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, w)
        self.conv1 = nn.Conv1d(w, w, 3, padding=2)
        self.conv2 = nn.Conv1d(w, w, 3, padding=2)
        self.head = nn.Linear(w, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(1, 2)
        h = F.relu(self.conv1(h)[..., : x.shape[1]])
        h = F.relu(self.conv2(h)[..., : x.shape[1]])
        return self.head(h.transpose(1, 2))


class FeatureMLP(nn.Module):
    """An MLP on 768-feature inputs (e.g. frozen text embeddings) -> 10 classes."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(768, w)
        self.fc2 = nn.Linear(w, w)
        self.out = nn.Linear(w, LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _features() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(BATCH, 768, generator=g), torch.randint(LABELS, (BATCH,), generator=g)


def _configs() -> dict[str, Callable[[int], Any]]:
    tf = _tf()
    common = {"vocab_size": VOCAB, "num_hidden_layers": 1, "max_position_embeddings": 16}
    llama_like = {
        **common,
        "intermediate_size": 0,
        "head_dim": 8,
    }

    def llama_args(w: int) -> dict[str, Any]:
        return {
            **llama_like,
            "hidden_size": w,
            "intermediate_size": 2 * w,
            "num_attention_heads": w // 8,
            "num_key_value_heads": w // 16,
        }

    return {
        "gpt2": lambda w: tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=w,
            n_layer=1,
            n_head=w // 8,
            n_positions=16,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        ),
        "llama": lambda w: tf.LlamaConfig(**llama_args(w)),
        "qwen2": lambda w: tf.Qwen2Config(**llama_args(w)),
        "mistral": lambda w: tf.MistralConfig(**llama_args(w)),
        "mixtral": lambda w: tf.MixtralConfig(
            **llama_args(w), num_local_experts=4, num_experts_per_tok=2
        ),
        "bert": lambda w: tf.BertConfig(
            **common,
            hidden_size=w,
            num_attention_heads=w // 8,
            intermediate_size=2 * w,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        "t5": lambda w: tf.T5Config(
            vocab_size=VOCAB,
            d_model=w,
            d_kv=8,
            d_ff=2 * w,
            num_layers=1,
            num_heads=w // 8,
            dropout_rate=0.0,
        ),
        "bart": lambda w: tf.BartConfig(
            vocab_size=VOCAB,
            d_model=w,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=w // 8,
            decoder_attention_heads=w // 8,
            encoder_ffn_dim=2 * w,
            decoder_ffn_dim=2 * w,
            max_position_embeddings=16,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        ),
        "mamba": lambda w: tf.MambaConfig(
            vocab_size=VOCAB, hidden_size=w, state_size=4, num_hidden_layers=1, time_step_rank=4
        ),
        "vit": lambda w: tf.ViTConfig(
            hidden_size=w,
            num_hidden_layers=1,
            num_attention_heads=w // 8,
            intermediate_size=2 * w,
            image_size=16,
            patch_size=8,
            num_labels=LABELS,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        "resnet": lambda w: tf.ResNetConfig(
            embedding_size=w,
            hidden_sizes=[w, 2 * w],
            depths=[1, 1],
            layer_type="basic",
            num_labels=LABELS,
        ),
        "convnext": lambda w: tf.ConvNextConfig(
            num_stages=2, hidden_sizes=[w, 2 * w], depths=[1, 1], num_labels=LABELS
        ),
    }


def zoo() -> dict[str, Arch]:
    """Every architecture of the zoo by name (transformers ones skip without transformers)."""
    archs: dict[str, Arch] = {}
    try:
        configs = _configs()
    except pytest.skip.Exception:
        configs = {}
    for name in ("gpt2", "llama", "qwen2", "mistral", "mixtral", "mamba"):
        if name in configs:
            build, example, loss = _causal(configs[name])
            tied = "untie" if name in ("gpt2", "mamba") else "error"
            archs[name] = Arch(name, build, example, loss, tied)
    if "bert" in configs:
        make = configs["bert"]

        def bert(w: int) -> nn.Module:
            return _tf().BertForMaskedLM(make(w))

        def bert_loss(model: nn.Module) -> torch.Tensor:
            x = text_batch()
            logits = model(input_ids=x).logits
            return F.cross_entropy(logits.flatten(0, 1), x.flatten())

        archs["bert"] = Arch("bert", bert, lambda: {"input_ids": text_batch()}, bert_loss, "untie")
    for name in ("t5", "bart"):
        if name in configs:
            build, example, loss = _seq2seq(configs[name])
            archs[name] = Arch(name, build, example, loss, "untie")
    for name, cls in (
        ("vit", "ViTForImageClassification"),
        ("resnet", "ResNetForImageClassification"),
        ("convnext", "ConvNextForImageClassification"),
    ):
        if name in configs:
            build, example, loss = _image(configs[name], cls)
            archs[name] = Arch(name, build, example, loss)
    lm_example = lambda: text_batch()[:, :-1]  # noqa: E731
    archs["transformer_encoder"] = Arch("transformer_encoder", EncoderLM, lm_example, _lm_loss)
    archs["lstm"] = Arch("lstm", RecurrentLM, lm_example, _lm_loss)
    archs["gru"] = Arch("gru", lambda w: RecurrentLM(w, nn.GRU), lm_example, _lm_loss)
    archs["conv1d"] = Arch("conv1d", ConvLM, lm_example, _lm_loss)

    def mlp_loss(model: nn.Module) -> torch.Tensor:
        x, y = _features()
        return F.cross_entropy(model(x), y)

    archs["mlp768"] = Arch("mlp768", FeatureMLP, lambda: _features()[0], mlp_loss)
    return archs
