"""The configuration's choice sets: each is defined once, here, as a ``Literal`` type.

A config field is typed with one of them (so checking a config checks the choice), and the tuples
below (``typing.get_args``) are what models, param, the CLI and sweeps check names against. This
module must not import torch.
"""

from __future__ import annotations

import typing
from typing import Literal

from hptransfer.optim import registry

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
DEFAULT_REFINE: Refine = "fit"
"""The refinement a sweep gets without ``[sweep] refine``: on four validation sweeps it found
every optimum of the dense grid for fewer runs than ``neighbours`` (docs/sweeps.md)."""

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
