"""Run configuration: frozen dataclasses, TOML recipes, ``--set`` overrides, run ids.

Every stage reads its settings from one :class:`RunConfig`. A recipe is a TOML file whose
tables mirror the dataclasses (``[model]``, ``[param]``, ``[optimizer]``, ``[train]``,
``[data]``, top-level ``seed``). A config is checked when it is built: every field's type,
its choice (each choice set is one ``Literal`` type in :mod:`hptransfer.config.choices`), its
range and finiteness, and the settings that constrain each other;
``RunConfig(model=ModelConfig(name="bogus"))`` raises. What touches the environment (the data
files exist) is checked by ``validate()``, which loading a recipe calls. Every refusal is a
one-line :class:`ConfigError` that names the key. This package must not import torch: the CLI
validates input before any heavy import.

Modules, low to high: choices (the choice sets), fields (type checks and coercion), hooks (the
user's callables: model.factory, loss, batch), param ([param]) and sections (the other
sections), run (RunConfig, run_id, dotted overrides), recipe (TOML in). Import the names from
here: ``from hptransfer.config import RunConfig``.
"""

from __future__ import annotations

from hptransfer.config.choices import (
    ALIGNMENT_PRESETS,
    ANCHORS,
    ATTN_SCALES,
    DEFAULT_REFINE,
    EPS_MODES,
    EXECUTORS,
    FORMS,
    LR_EXPONENTS,
    MODELS,
    OPTIMIZERS,
    PARAMETERIZATIONS,
    REFINES,
    ROLES,
    TIE_RULES,
    AlignmentName,
    AlignmentPreset,
    Anchor,
    AnchorChoice,
    AttnScale,
    DataFormat,
    Device,
    Distributed,
    Dtype,
    EpsMode,
    Executor,
    Form,
    LrExponents,
    ModelName,
    ParameterizationName,
    Refine,
    Role,
    Schedule,
    TieRule,
    TokenDtype,
    WandbMode,
    WdMode,
)
from hptransfer.config.fields import check_fields, from_table
from hptransfer.config.hooks import load_callable
from hptransfer.config.param import ParamConfig, check_init_overrides
from hptransfer.config.recipe import from_dict, load_recipe, parse_sets, parse_value, read_toml
from hptransfer.config.run import RunConfig, all_keys, apply_overrides, check_keys, flatten
from hptransfer.config.run import _defaults as _defaults  # its cache, cleared by tests
from hptransfer.config.sections import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    TrackConfig,
    TrainConfig,
)
from hptransfer.errors import ConfigError  # the user-error type

__all__ = [
    "ALIGNMENT_PRESETS",
    "ANCHORS",
    "ATTN_SCALES",
    "EPS_MODES",
    "EXECUTORS",
    "REFINES",
    "FORMS",
    "LR_EXPONENTS",
    "MODELS",
    "OPTIMIZERS",
    "PARAMETERIZATIONS",
    "ROLES",
    "TIE_RULES",
    "AlignmentName",
    "AlignmentPreset",
    "Anchor",
    "AnchorChoice",
    "AttnScale",
    "ConfigError",
    "DataConfig",
    "DataFormat",
    "Device",
    "Distributed",
    "Dtype",
    "EpsMode",
    "Executor",
    "Refine",
    "DEFAULT_REFINE",
    "Form",
    "LrExponents",
    "ModelConfig",
    "ModelName",
    "OptimizerConfig",
    "ParamConfig",
    "ParameterizationName",
    "Role",
    "RunConfig",
    "Schedule",
    "TieRule",
    "TokenDtype",
    "TrackConfig",
    "TrainConfig",
    "WandbMode",
    "WdMode",
    "all_keys",
    "apply_overrides",
    "check_fields",
    "check_init_overrides",
    "check_keys",
    "flatten",
    "from_dict",
    "from_table",
    "load_callable",
    "load_recipe",
    "parse_sets",
    "parse_value",
    "read_toml",
]
