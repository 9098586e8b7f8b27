"""The sections of a run's config ([model], [optimizer], [train], [data], [track]; [param] has
its own module): frozen dataclasses with a docstring per field, checked when built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hptransfer.config.choices import (
    AttnScale,
    DataFormat,
    Device,
    Distributed,
    Dtype,
    ModelName,
    Schedule,
    TokenDtype,
    WandbMode,
    WdMode,
)
from hptransfer.config.fields import check_fields, check_min
from hptransfer.config.hooks import load_callable, split_callable
from hptransfer.errors import ConfigError
from hptransfer.optim import registry


@dataclass(frozen=True)
class ModelConfig:
    name: ModelName = "nanodo"
    """Architecture: nanodo (the decoder of [E]), mlp (a per-token model for quick checks), llama
    (RMSNorm, SwiGLU, rotary), hf_gpt2 or hf_llama (transformers models; the hf extra)."""
    width: int = 128
    """Model dimension D (the width n)."""
    depth: int = 2
    """Number of transformer blocks (hidden layers for mlp)."""
    head_dim: int = 32
    """Attention head dimension, fixed across widths (heads = width / head_dim)."""
    attn_scale: AttnScale = "sqrt"
    """Attention logit scale: sqrt = 1/sqrt(head_dim), linear = 1/head_dim (muP's)."""
    kv_group: int = 1
    """llama, hf_llama: query heads per key/value head (grouped-query attention; 1 = off). Fixed
    across widths, so the kv heads (heads / kv_group) grow with width like the heads."""
    factory: str = ""
    """Your own model instead of a built-in one: "package.module:make_model" or
    "path/to/file.py:make_model" (a path relative to the current directory), a callable taking
    the width and returning a torch.nn.Module; it also gets depth= and vocab_size= when its
    signature accepts them. model.name, head_dim and attn_scale are then unused
    (docs/custom-models.md)."""
    loss: str = ""
    """With model.factory: "module:fn" (or "file.py:fn") computing fn(model, batch) -> scalar
    loss; "" = next-token cross-entropy on the (B, T, V) logits (or an output's .logits)."""
    batch: str = ""
    """With model.factory: "module:fn" (or "file.py:fn") making the batches when the data is
    not the token pipeline's: fn(step, batch_size=..., seed=..., split="train" or "eval")
    -> (inputs, targets); "" = token ids from [data]."""

    def __post_init__(self) -> None:
        check_fields(self, "model.")
        for key in ("width", "depth", "head_dim", "kv_group"):
            check_min(f"model.{key}", getattr(self, key), 1)
        for key in ("factory", "loss", "batch"):
            value = getattr(self, key)
            if value and not split_callable(value)[1]:
                raise ConfigError(
                    f"model.{key}: expected 'package.module:function' or "
                    f"'path/to/file.py:function', got {value!r}"
                )
        if self.factory:
            if self.name != "nanodo":
                raise ConfigError(
                    f"model.factory builds the model: unset model.name (= {self.name!r})"
                )
            if self.kv_group != 1 or self.attn_scale != "sqrt":
                raise ConfigError(
                    "model.kv_group and model.attn_scale apply to the built-in models, "
                    "not to model.factory"
                )
            return
        if self.loss or self.batch:
            raise ConfigError(
                f"model.{'loss' if self.loss else 'batch'} applies with model.factory only"
            )
        if self.name != "mlp" and self.width % self.head_dim:
            raise ConfigError(
                f"model.width={self.width} is not divisible by model.head_dim={self.head_dim}"
            )
        if self.name in ("llama", "hf_llama"):
            if self.head_dim % 2:
                raise ConfigError(f"model.head_dim={self.head_dim} must be even (rotary pairs)")
            if (self.width // self.head_dim) % self.kv_group:
                raise ConfigError(
                    f"model.kv_group={self.kv_group} does not divide the "
                    f"{self.width // self.head_dim} heads of model.width={self.width}"
                )
        elif self.kv_group != 1:
            raise ConfigError(f"model.kv_group applies to llama and hf_llama, not {self.name}")

    def validate(self) -> None:
        """What construction cannot check: model.factory, loss and batch import and name
        callables (importing the user's module; nothing is built)."""
        for key in ("factory", "loss", "batch"):
            if getattr(self, key):
                load_callable(getattr(self, key), f"model.{key}")


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    """Optimizer name (see `hptransfer rules --help` for the list)."""
    lr: float = 1e-3
    """Base learning rate beta; each role gets beta * gamma * width_mult^-c."""
    eps: float | None = None
    """Base epsilon; None = the optimizer's default."""
    betas: tuple[float, float] | None = None
    """Adam-family betas (muon: those of its AdamW part); None = the optimizer's default."""
    momentum: float | None = None
    """SGD momentum (muon: Muon's momentum; shampoo: its gradient EMA); None = the default."""
    weight_decay: float = 0.0
    wd_mode: WdMode = "coupled"
    """coupled: shrink = lr * wd (PyTorch AdamW); independent: shrink follows only the schedule."""
    options: dict[str, Any] = field(default_factory=dict)
    """Optimizer-specific knobs, passed through (e.g. a, b for adam_atan2; clamp for lamb)."""

    def __post_init__(self) -> None:
        check_fields(self, "optimizer.")
        registry.check_name(self.name, "optimizer.name")
        check_min("optimizer.lr", self.lr, 0, strict=True)
        if self.eps is not None:
            check_min("optimizer.eps", self.eps, 0)
        for i, beta in enumerate(self.betas or ()):
            if not 0 <= beta < 1:
                raise ConfigError(f"optimizer.betas[{i}] must be in [0, 1), got {beta}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ConfigError(f"optimizer.momentum must be in [0, 1), got {self.momentum}")
        check_min("optimizer.weight_decay", self.weight_decay, 0)

    def hparams(self) -> dict[str, Any]:
        """Knobs for ``build_optimizer`` (epsilon travels in the param groups instead)."""
        out: dict[str, Any] = dict(self.options)
        if self.betas is not None:
            out["betas"] = tuple(self.betas)
        if self.momentum is not None:
            out["momentum"] = self.momentum
        if self.weight_decay:
            out["weight_decay"] = self.weight_decay
            out["wd_mode"] = self.wd_mode
        return out


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    batch_size: int = 16
    seq_len: int = 64
    schedule: Schedule = "cosine"
    """constant, cosine (warmup then cosine to final_lr_frac), wsd (warmup-stable-decay)."""
    warmup_steps: int = 20
    final_lr_frac: float = 0.1
    """LR at the end of cosine / wsd, as a fraction of the peak."""
    decay_frac: float = 0.2
    """wsd: fraction of the steps spent in the final linear decay."""
    eval_every: int = 50
    eval_batches: int = 10
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 = off."""
    dtype: Dtype = "float32"
    """float32, float64 (parity tests), or bfloat16 (autocast; loss in float32)."""
    diverge_factor: float = 3.0
    """The run stops as diverged when its loss exceeds this factor times the step-0 loss."""
    align_every: int = 0
    """Log alignment exponents (alpha, omega, u per linear layer, on the step-0 batch) every this
    many steps as align/<exponent>/<param name>; 0 = off."""
    align_batch: int = 4
    """Sequences of the step-0 batch the alignment probes use (fewer = cheaper probes)."""
    device: Device = "cpu"
    """cpu or cuda (with several processes, rank r uses cuda:LOCAL_RANK)."""
    distributed: Distributed = "auto"
    """none, ddp (data parallel) or fsdp (fully sharded, FSDP2); auto = ddp when launched by
    torchrun with WORLD_SIZE > 1, else none. The global batch train.batch_size is split evenly
    across the processes, so the result equals one process's (docs/performance.md)."""
    compile: bool = False
    """torch.compile the model for the training steps (evaluation stays eager)."""
    checkpoint_every: int = 0
    """Write a checkpoint in the run directory every this many steps (model, optimizer, LR
    schedule, RNG and loop position; checkpoint.pt, or under torchrun a checkpoint-<steps>
    directory); a run restarted on that directory resumes from it with bitwise-equal losses.
    0 = off."""
    checkpoint_minutes: float = 0.0
    """Also write one whenever this many minutes of training passed since the last (or the
    start); 0 = off. Either interval, or both (whichever comes first)."""

    def __post_init__(self) -> None:
        check_fields(self, "train.")
        for key in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches", "align_batch"):
            check_min(f"train.{key}", getattr(self, key), 1)
        for key in (
            "warmup_steps", "align_every", "grad_clip", "checkpoint_every", "checkpoint_minutes"
        ):  # fmt: skip
            check_min(f"train.{key}", getattr(self, key), 0)
        for key in ("final_lr_frac", "decay_frac"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"train.{key} must be in [0, 1], got {getattr(self, key)}")
        check_min("train.diverge_factor", self.diverge_factor, 1, strict=True)
        if self.align_every and self.distributed == "fsdp":
            raise ConfigError("train.align_every: alignment probes do not support fsdp yet")


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    """A local file: text, JSON lines, Parquet or a token file; empty = the built-in corpus (the
    Python standard library's source)."""
    format: DataFormat = "auto"
    """auto (by extension: .jsonl / .ndjson, .parquet, .bin, else text), text, jsonl, parquet,
    tokens (headerless ids, nanoGPT's train.bin)."""
    text_field: str = "text"
    """JSON lines, Parquet and hub datasets: the field that holds each document's text."""
    eval_path: str = ""
    """A second file of the same format held out for evaluation (nanoGPT's val.bin); empty =
    split data.path (5% held out)."""
    token_dtype: TokenDtype = "uint16"
    """Token files: uint16 (nanoGPT) or uint32 little-endian ids."""
    dataset: str = ""
    """A Hugging Face dataset streamed from the hub: c4, fineweb-edu or NAME[:CONFIG] (the hf
    extra and network; else download it and set data.path)."""
    dataset_split: str = "train"
    dataset_chars: int = 20_000_000
    """How many characters of the hub dataset to stream (whole documents)."""
    tokenizer: str = "byte"
    """byte (256 ids), bpe (trained on the corpus, saved as tokenizer.json in the run directory
    and reloaded from there), or a local tokenizer.json (or a directory with one)."""
    vocab_size: int = 0
    """0 = the tokenizer's size (token files: largest id + 1); larger pads the model's
    vocabulary (nanoGPT's 50304); bpe: the size to train (0 = 4096)."""

    def resolved_format(self) -> str:
        """The file format, with "auto" resolved from data.path's extension."""
        if self.format != "auto":
            return self.format
        suffix = Path(self.path).suffix.lower()
        return {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".bin": "tokens"}.get(
            suffix, "text"
        )

    def __post_init__(self) -> None:
        check_fields(self, "data.")
        if self.dataset and self.path:
            raise ConfigError("data.dataset and data.path are exclusive: set one of them")
        if self.eval_path and not self.path:
            raise ConfigError("data.eval_path needs data.path (the training file)")
        if self.resolved_format() == "tokens" and (self.dataset or not self.path):
            raise ConfigError("data.format=tokens needs data.path (a token file)")
        if self.resolved_format() == "tokens" and self.tokenizer != "byte":
            raise ConfigError("data.tokenizer does not apply to token files (already tokenized)")
        if self.vocab_size < 0 or self.dataset_chars < 1:
            raise ConfigError("data.vocab_size must be >= 0 and data.dataset_chars >= 1")
        if self.tokenizer == "byte" and 0 < self.vocab_size < 256:
            raise ConfigError(f"data.vocab_size={self.vocab_size} < 256 byte tokens")
        if self.tokenizer == "bpe" and 0 < self.vocab_size <= 256:
            raise ConfigError(f"data.vocab_size={self.vocab_size}: bpe needs more than 256")

    def validate(self) -> None:
        """What construction cannot check: the files named exist."""
        for key in ("path", "eval_path"):
            value = getattr(self, key)
            if value and not Path(value).is_file():
                raise ConfigError(f"data.{key}: no such file: {value}")
        if self.tokenizer not in ("byte", "bpe") and not Path(self.tokenizer).exists():
            raise ConfigError(
                f"data.tokenizer: expected byte, bpe or a local tokenizer path; "
                f"no such file or directory: {self.tokenizer}"
            )


@dataclass(frozen=True)
class TrackConfig:
    """Experiment trackers. They copy what metrics.jsonl records (the store stays the source of
    truth) and do not change a run's numbers, so this section is not part of the run id."""

    tensorboard: bool = False
    """Log every metric to TensorBoard event files (the track extra)."""
    wandb: bool = False
    """Log every metric to Weights & Biases (the track extra)."""
    wandb_mode: WandbMode = "offline"
    """offline (files only; `wandb sync` uploads them later) or online."""
    wandb_project: str = "hptransfer"
    dir: str = ""
    """Where tracker files go; empty = the run directory (its tensorboard/ and wandb/)."""

    def __post_init__(self) -> None:
        check_fields(self, "track.")
