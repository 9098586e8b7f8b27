"""Run configuration: frozen dataclasses, TOML recipes, ``--set`` overrides, run ids.

Every stage reads its settings from one :class:`RunConfig`. A recipe is a TOML file whose
tables mirror the dataclasses (``[model]``, ``[param]``, ``[optimizer]``, ``[train]``,
``[data]``, top-level ``seed``). A config is checked when it is built: every field's type,
its choice (each choice set is one ``Literal`` type below), its range and finiteness, and the
settings that constrain each other; ``RunConfig(model=ModelConfig(name="bogus"))`` raises. What
touches the environment (the data files exist) is checked by ``validate()``, which loading a
recipe calls. Every refusal is a one-line :class:`ConfigError` that names the key. This module
must not import torch: the CLI validates input before any heavy import.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib
import importlib.util
import json
import math
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hptransfer.errors import ConfigError as ConfigError  # re-exported: the user-error type
from hptransfer.optim import registry

# Each choice set is defined once, here, as the Literal type of its config field; the tuples
# below (typing.get_args) are what models, param, the CLI and sweeps check names against.
ModelName = Literal["nanodo", "mlp", "llama", "hf_gpt2", "hf_llama"]
AttnScale = Literal["sqrt", "linear"]
ParameterizationName = Literal["sp", "ntk", "mup", "mfp"]
AlignmentPreset = Literal["full", "none"]
AlignmentName = Literal[AlignmentPreset, "measured"]
LrExponents = Literal["per_layer", "global"]
Anchor = Literal["relative", "absolute", "model"]
AnchorChoice = Literal[Anchor, "auto"]
Form = Literal["multiplier", "folded"]
EpsMode = Literal["constant", "small", "per_layer"]
TieRule = Literal["error", "input", "output", "untie"]
Role = Literal["input", "hidden", "output", "vector", "fixed"]
WdMode = Literal["coupled", "independent"]
Schedule = Literal["constant", "cosine", "wsd"]
Dtype = Literal["float32", "float64", "bfloat16"]
Device = Literal["cpu", "cuda"]
Distributed = Literal["auto", "none", "ddp", "fsdp"]
DataFormat = Literal["auto", "text", "jsonl", "parquet", "tokens"]
TokenDtype = Literal["uint16", "uint32"]
WandbMode = Literal["offline", "online"]
Executor = Literal["local", "ray"]
"""Where a sweep's runs execute (the ``[sweep]`` table's executor, hptransfer.sweep.spec)."""
Refine = Literal["neighbours", "fit"]
"""How an adaptive LR search refines around its best LR (``[sweep] refine``; sweep/search.py)."""

MODELS: tuple[str, ...] = typing.get_args(ModelName)
ATTN_SCALES: tuple[str, ...] = typing.get_args(AttnScale)
PARAMETERIZATIONS: tuple[str, ...] = typing.get_args(ParameterizationName)
ALIGNMENT_PRESETS: tuple[str, ...] = typing.get_args(AlignmentPreset)
LR_EXPONENTS: tuple[str, ...] = typing.get_args(LrExponents)
ANCHORS: tuple[str, ...] = typing.get_args(Anchor)
FORMS: tuple[str, ...] = typing.get_args(Form)
EPS_MODES: tuple[str, ...] = typing.get_args(EpsMode)
TIE_RULES: tuple[str, ...] = typing.get_args(TieRule)
ROLES: tuple[str, ...] = typing.get_args(Role)
EXECUTORS: tuple[str, ...] = typing.get_args(Executor)
REFINES: tuple[str, ...] = typing.get_args(Refine)
#: The optimizer names: a live view of the optimizer registry (imports no optimizer).
OPTIMIZERS = registry.NAMES


_Section = typing.TypeVar("_Section")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r}; choose one of {', '.join(choices)}")


def check_fields(section: Any, prefix: str) -> None:
    """Every field of a config dataclass (a RunConfig section, a sweep's settings; called from
    their ``__post_init__``) against its type: choices (Literal) by name, numbers
    as numbers and finite (no NaN or inf anywhere in a config), strings as strings."""
    for name, hint in _section_types(type(section)).items():
        if not dataclasses.is_dataclass(hint):
            _coerce(f"{prefix}{name}", getattr(section, name), hint)


def _check_min(key: str, value: float, low: float, *, strict: bool = False) -> None:
    """``value >= low`` (``> low`` when strict), naming the key."""
    if value < low or (strict and value == low):
        raise ConfigError(f"{key} must be {'>' if strict else '>='} {low:g}, got {value}")


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
            _check_min(f"model.{key}", getattr(self, key), 1)
        for key in ("factory", "loss", "batch"):
            value = getattr(self, key)
            if value and not _callable_parts(value)[1]:
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


def _callable_parts(text: str) -> tuple[str, str]:
    """'where:name' -> (where, name); ('', '') when ``text`` has no such form."""
    where, sep, name = text.rpartition(":")
    if not sep or not where.strip() or not name.isidentifier():
        return "", ""
    return where.strip(), name


def load_callable(text: str, key: str) -> Any:
    """The callable ``text`` names: "package.module:name" (imported) or "path/file.py:name"
    (loaded from that file, relative to the current directory, once per process). Refuses
    with a one-line ConfigError naming ``key`` when the module cannot be imported, lacks the
    name, or the name is not callable."""
    where, name = _callable_parts(text)
    if not name:
        raise ConfigError(f"{key}: expected 'package.module:function', got {text!r}")
    try:
        if where.endswith(".py") or "/" in where or "\\" in where:
            module = _load_file(Path(where), key)
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as e:  # the user's module failed to import: name it and the reason
        raise ConfigError(f"{key}: cannot import {where!r}: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise ConfigError(f"{key}: {where!r} has no attribute {name!r}")
    if not callable(fn):
        raise ConfigError(f"{key}: {where}:{name} is not callable ({type(fn).__name__})")
    return fn


def _load_file(path: Path, key: str) -> types.ModuleType:
    """The module of a Python file, imported once per process under a name made from its
    absolute path (so every load of one file gives the same functions)."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"{key}: no such file: {path}")
    mod_name = "hptransfer_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{key}: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


@dataclass(frozen=True)
class ParamConfig:
    name: ParameterizationName = "mup"
    """Parameterization: sp, ntk, mup or mfp (the (a, b) table of [E])."""
    alignment: AlignmentName = "full"
    """Alignment the LR exponents c are derived for: full, none, or measured (from
    param.alignment_values; `hptransfer rules --alignment-from RUN_DIR` prints them)."""
    alignment_values: dict[str, Any] = field(default_factory=dict)
    """measured: per role (hidden, output) the exponents [alpha, omega, u], e.g.
    {hidden = [0.8, 0.5, 0.7], output = [0.9, 0.5, 0.8]}."""
    base_width: int = 64
    """Width n0 at which hyperparameters are tuned; width_mult = width / base_width."""
    lr_exponents: LrExponents = "per_layer"
    """per_layer: c from the solver; global: c = 0 for every role (one LR per width)."""
    anchor: AnchorChoice = "auto"
    """relative: a and b use width_mult (every parameterization equals SP at base_width);
    absolute: a and b use the layer's n itself, as [E] does; model: the model's own init at
    base_width, rescaled by width_mult^-b (microsoft/mup; see hptransfer.param.init); auto:
    model for model.factory's model (one the project did not write keeps its own init),
    relative for the built-in models."""
    form: Form = "multiplier"
    """multiplier: forward multipliers n^-a; folded: no multipliers, init/LR/eps absorb them."""
    gamma_input: float = 1.0
    """Per-role LR constant for input (embedding) parameters."""
    gamma_hidden: float = 1.0
    gamma_output: float = 1.0
    gamma_vector: float = 1.0
    init_input: float = 1.0
    """Multiplies the rule's init std for input parameters (0 gives a zero init)."""
    init_hidden: float = 1.0
    init_output: float = 1.0
    eps_mode: EpsMode = "constant"
    """constant: one epsilon; small: a tiny constant (1e-15, or the optimizer's default if
    smaller); per_layer: eps * width_mult^-g (g = the role's gradient exponent; see
    docs/alignment.md for Sophia and Shampoo). adam_atan2 and sgd have no epsilon."""
    k_switches: str = ""
    """[K]'s SP -> muP switches as four 0/1 digits: embedding LR, attention scale, norm-gain LR,
    readout rule (e.g. "1000" = SP+Embd, "1111" = muP); needs param.name = sp. "" = off."""
    depth_exponent: float = 0.0
    """p of the residual-branch multiplier (depth_base / depth)^p: 0.5 depth-muP, 1 CompleteP;
    0 = off."""
    depth_base: int = 0
    """L0, the depth at which hyperparameters are tuned (needed when depth_exponent > 0)."""
    depth_lr: bool = True
    """With depth_exponent > 0, also scale hidden-layer LRs by (L0/L)^(1-p) ((L0/L)^(1-2p) for
    SGD) so each block's update moves the residual stream by a depth-free amount (the
    depth-muP / CompleteP rule; derived in docs/alignment.md, not given by [S])."""
    depth_branches: str = (
        "*blocks.*.attn,*blocks.*.mlp,*layers.*.self_attn,*layers.*.mlp,*h.*.attn,*h.*.mlp"
    )
    """Comma-separated fnmatch patterns naming the residual-branch modules whose outputs get the
    depth multiplier (the defaults cover nanodo, llama-style and GPT-2-style names)."""
    tied: TieRule = "error"
    """What to do with tied input/output weights: error, input, output, untie."""
    overrides: dict[str, Role] = field(default_factory=dict)
    """Name pattern (fnmatch) -> role, applied before automatic role inference."""
    init_overrides: dict[str, Any] = field(default_factory=dict)
    """Name pattern (fnmatch) -> "keep" (values kept), "zero", or a number: the init constant
    of the matching parameters in place of their role's init_* (hptransfer.param.init)."""

    def __post_init__(self) -> None:
        check_fields(self, "param.")
        _check_alignment_values(self.alignment, self.alignment_values)
        check_init_overrides(self.init_overrides, "param.init_overrides")
        for role in ("input", "hidden", "output", "vector"):
            _check_min(f"param.gamma_{role}", getattr(self, f"gamma_{role}"), 0, strict=True)
        for role in ("input", "hidden", "output"):
            _check_min(f"param.init_{role}", getattr(self, f"init_{role}"), 0)
        if self.k_switches and (len(self.k_switches) != 4 or set(self.k_switches) - {"0", "1"}):
            raise ConfigError(
                f"param.k_switches must be four 0/1 digits such as '1000', got {self.k_switches!r}"
            )
        if self.k_switches and self.name != "sp":
            raise ConfigError("param.k_switches applies on top of sp: set param.name = sp")
        if self.k_switches and self.alignment != "full":
            raise ConfigError("param.k_switches uses muP's full-alignment ratios: unset alignment")
        _check_min("param.depth_exponent", self.depth_exponent, 0)
        if self.depth_exponent > 0 and self.depth_base < 1:
            raise ConfigError("param.depth_exponent > 0 needs param.depth_base (L0) >= 1")
        _check_min("param.base_width", self.base_width, 1)
        _check_min("param.depth_base", self.depth_base, 0)


def check_init_overrides(
    overrides: Mapping[str, Any] | None, key: str = "init_overrides"
) -> dict[str, str | float]:
    """Init overrides (name pattern -> "keep", "zero" or a finite number >= 0) as a dict; a
    bad value is a ConfigError naming ``key`` and the pattern."""
    out = dict(overrides or {})
    for pattern, value in out.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (value in ("keep", "zero") or (number and math.isfinite(value) and value >= 0)):
            raise ConfigError(
                f'{key} {pattern!r} = {value!r}: use "keep", "zero" or a number >= 0 (the init '
                "constant of the matching parameters)"
            )
    return out


def _check_alignment_values(alignment: str, values: dict[str, Any]) -> None:
    """measured needs [alpha, omega, u] numbers for hidden and output; the presets need none."""
    if alignment != "measured":
        if values:
            raise ConfigError("param.alignment_values is used only with param.alignment = measured")
        return
    if set(values) != {"hidden", "output"}:
        raise ConfigError(
            "param.alignment = measured needs param.alignment_values for exactly hidden and "
            f"output, got {sorted(values) or 'none'}"
        )
    for role, triple in values.items():
        if (
            not isinstance(triple, (list, tuple))
            or len(triple) != 3
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in triple
            )
        ):
            raise ConfigError(
                f"param.alignment_values.{role} must be [alpha, omega, u] finite numbers, "
                f"got {triple!r}"
            )


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
        _check_min("optimizer.lr", self.lr, 0, strict=True)
        if self.eps is not None:
            _check_min("optimizer.eps", self.eps, 0)
        for i, beta in enumerate(self.betas or ()):
            if not 0 <= beta < 1:
                raise ConfigError(f"optimizer.betas[{i}] must be in [0, 1), got {beta}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ConfigError(f"optimizer.momentum must be in [0, 1), got {self.momentum}")
        _check_min("optimizer.weight_decay", self.weight_decay, 0)

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
            _check_min(f"train.{key}", getattr(self, key), 1)
        for key in (
            "warmup_steps", "align_every", "grad_clip", "checkpoint_every", "checkpoint_minutes"
        ):  # fmt: skip
            _check_min(f"train.{key}", getattr(self, key), 0)
        for key in ("final_lr_frac", "decay_frac"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"train.{key} must be in [0, 1], got {getattr(self, key)}")
        _check_min("train.diverge_factor", self.diverge_factor, 1, strict=True)
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


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    param: ParamConfig = field(default_factory=ParamConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, hint in _section_types(type(self)).items():
            if (
                isinstance(hint, type)
                and dataclasses.is_dataclass(hint)
                and not isinstance(getattr(self, name), hint)
            ):
                raise ConfigError(
                    f"{name}: expected a {hint.__name__}, got {getattr(self, name)!r}"
                )
        check_fields(self, "")
        _check_min("seed", self.seed, 0)
        _check_across_sections(self)

    def validate(self) -> RunConfig:
        """Checks that touch the environment (the data files exist, model.factory and its
        hooks import); the values themselves were checked when the config was built. Returns
        the config."""
        self.model.validate()
        self.data.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return typing.cast(dict[str, Any], _plain(dataclasses.asdict(self)))

    def run_id(self) -> str:
        """Stable 12-hex-digit id: hash of the values that differ from the defaults, less [track].

        Leaving defaults out keeps ids, and so resumable results directories, valid when a new
        config field (with a default) is added; changing an existing default is therefore a
        breaking change for stored results.
        """
        defaults = _defaults()
        changed = {
            k: v
            for k, v in flatten(self.to_dict()).items()
            if not k.startswith("track.") and (k not in defaults or defaults[k] != v)
        }
        canonical = json.dumps(changed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def replace(self, **dotted: Any) -> RunConfig:
        """A copy with dotted keys set, e.g. ``cfg.replace(**{"model.width": 256})``."""
        return apply_overrides(self, dotted)


def _check_across_sections(cfg: RunConfig) -> None:
    """Settings of one section that constrain another."""
    p = cfg.param
    if p.eps_mode == "small" and cfg.optimizer.eps is not None:
        raise ConfigError(
            "param.eps_mode = small sets epsilon itself: unset optimizer.eps or use constant"
        )
    if p.k_switches and p.k_switches[1] == "1" and cfg.model.factory:
        raise ConfigError(
            f"param.k_switches = {p.k_switches}: the attention switch (second digit) sets the "
            "built-in models' attention scale; model.factory's model has its own"
        )
    if p.k_switches and p.k_switches[1] == "0" and cfg.model.attn_scale != "sqrt":
        raise ConfigError(
            f"param.k_switches = {p.k_switches} keeps SP's 1/sqrt(head_dim) attention: set "
            "model.attn_scale = sqrt or the second switch to 1"
        )


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _section_types(cls: type) -> dict[str, Any]:
    """Field types of a config dataclass (cached: resolving hints costs ~40 ms per call)."""
    return _type_hints(cls)


# functools.cache types its argument as Hashable, which mypy refuses a type[X] for (it looks up
# X.__hash__, the instances' method); _section_types above passes a plain `type`.
@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the dataclass field type ``hint``; return the stored value."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is Literal:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        _check_choice(key, value, args)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        if args[1] is Any:
            return dict(value)
        return {k: _coerce(f"{key}[{k!r}]", v, args[1]) for k, v in value.items()}
    raise TypeError(f"unsupported config field type {hint!r} for {key}")


def from_table(cls: type[_Section], table: dict[str, Any], prefix: str) -> _Section:
    """A config dataclass from a table of its own fields: values coerced to the field types (an
    integer where a float is due becomes a float); the class checks the rest when built."""
    hints = _section_types(cls)
    return cls(**{k: _coerce(f"{prefix}{k}", v, hints[k]) for k, v in table.items()})


def check_keys(keys: typing.Iterable[str]) -> None:
    """Refuse, by name, a dotted key no recipe may set (without building a config)."""
    known = all_keys()
    for key in keys:
        parts = key.split(".")
        if key not in known and ".".join(parts[:2]) not in _DICT_FIELDS:
            raise _unknown_key(key, known)


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def all_keys() -> list[str]:
    """Every dotted key a recipe may set."""
    keys = ["seed"]
    for name, hint in _section_types(RunConfig).items():
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            keys += [f"{name}.{k}" for k in _section_types(hint)]
    return keys


def apply_overrides(cfg: RunConfig, dotted: dict[str, Any]) -> RunConfig:
    """Set dotted keys (``model.width``; ``optimizer.options.a`` inside a table field)."""
    sections = {
        name: dataclasses.asdict(getattr(cfg, name))
        for name, hint in _section_types(RunConfig).items()
        if dataclasses.is_dataclass(hint)
    }
    top: dict[str, Any] = {"seed": cfg.seed}
    for key, value in dotted.items():
        parts = key.split(".")
        if parts == ["seed"]:
            top["seed"] = _coerce("seed", value, int)
            continue
        if len(parts) < 2 or parts[0] not in sections:
            raise _unknown_key(key, all_keys())
        section_cls = _section_types(RunConfig)[parts[0]]
        hints = _section_types(section_cls)
        fname = parts[1]
        if fname not in hints:
            raise _unknown_key(key, all_keys())
        if len(parts) > 2:
            if typing.get_origin(hints[fname]) is not dict:
                raise _unknown_key(key, all_keys())
            table = dict(sections[parts[0]][fname])
            table[".".join(parts[2:])] = value
            sections[parts[0]][fname] = table
        else:
            sections[parts[0]][fname] = _coerce(key, value, hints[fname])
    built = {name: _section_types(RunConfig)[name](**values) for name, values in sections.items()}
    return RunConfig(**built, seed=top["seed"])


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables -> dotted keys; stops at dict-typed fields (overrides, options)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in _DICT_FIELDS:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


@functools.cache
def _defaults() -> dict[str, Any]:
    return flatten(RunConfig().to_dict())


_DICT_FIELDS = {
    "param.overrides",
    "param.init_overrides",
    "param.alignment_values",
    "optimizer.options",
}


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax where it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such recipe file: {p}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None


def from_dict(table: dict[str, Any]) -> RunConfig:
    """A config from nested tables (as in a recipe) or dotted keys; validated."""
    return apply_overrides(RunConfig(), flatten(table)).validate()


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a recipe, apply dotted overrides, validate."""
    dotted = flatten(read_toml(path))
    dotted.update(overrides or {})
    return apply_overrides(RunConfig(), dotted).validate()
