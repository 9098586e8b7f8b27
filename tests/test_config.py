"""config: typed, frozen sections checked when built; each choice set defined once."""

from __future__ import annotations

import ast
import dataclasses
import math
import typing
from pathlib import Path

import pytest

import hptransfer
from hptransfer import config
from hptransfer.config import ConfigError, DataConfig, ModelConfig, OptimizerConfig, RunConfig

SRC = Path(hptransfer.__file__).parent


def test_a_bogus_choice_or_range_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="model.name"):
        RunConfig(model=ModelConfig(name="bogus"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model.width must be >= 1, got -3"):
        ModelConfig(width=-3)
    with pytest.raises(ConfigError, match="optimizer.name"):
        OptimizerConfig(name="adamax")
    with pytest.raises(ConfigError, match="model: expected a ModelConfig"):
        RunConfig(model={"name": "mlp"})  # type: ignore[arg-type]


INF, NAN = math.inf, math.nan
BAD_VALUES = [
    ("optimizer.lr", INF),
    ("optimizer.lr", NAN),
    ("optimizer.lr", 0.0),
    ("optimizer.lr", -1e-3),
    ("optimizer.eps", NAN),
    ("optimizer.eps", INF),
    ("optimizer.eps", -1e-8),
    ("optimizer.weight_decay", -0.1),
    ("optimizer.weight_decay", NAN),
    ("optimizer.betas", [0.9, 1.0]),
    ("optimizer.betas", [-0.1, 0.9]),
    ("optimizer.betas", [0.9, NAN]),
    ("optimizer.momentum", 1.0),
    ("optimizer.momentum", -0.5),
    ("train.grad_clip", -1.0),
    ("train.grad_clip", INF),
    ("train.final_lr_frac", 1.5),
    ("train.final_lr_frac", -0.1),
    ("train.decay_frac", NAN),
    ("train.diverge_factor", NAN),
    ("train.diverge_factor", INF),
    ("train.diverge_factor", 1.0),
    ("train.diverge_factor", -3.0),
    ("train.warmup_steps", -1),
    ("train.steps", 0),
    ("param.gamma_hidden", -1.0),
    ("param.gamma_output", 0.0),
    ("param.gamma_input", INF),
    ("param.init_hidden", -1.0),
    ("param.init_output", NAN),
    ("param.depth_exponent", NAN),
    ("param.depth_base", -1),
    ("param.base_width", 0),
    ("model.width", -3),
    ("model.kv_group", 0),
    ("data.vocab_size", -1),
    ("seed", -1),
]


@pytest.mark.parametrize("key,value", BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_every_number_is_finite_and_in_range(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig().replace(**{key: value})
    message = str(err.value)
    assert "\n" not in message and message.startswith(key)


GOOD_EDGES = {
    "optimizer.eps": 0.0,
    "optimizer.weight_decay": 0.0,
    "optimizer.betas": [0.0, 0.999],
    "optimizer.momentum": 0.0,
    "train.final_lr_frac": 1.0,
    "train.grad_clip": 0.0,
    "train.diverge_factor": 1.5,
    "param.init_hidden": 0.0,
    "seed": 0,
}


@pytest.mark.parametrize("key,value", GOOD_EDGES.items())
def test_the_edges_of_each_range_are_accepted(key: str, value: object) -> None:
    RunConfig().replace(**{key: value})


def test_measured_alignment_values_must_be_finite() -> None:
    values = {"hidden": [0.8, 0.5, INF], "output": [0.9, 0.5, 0.8]}
    with pytest.raises(ConfigError, match="param.alignment_values.hidden"):
        RunConfig().replace(**{"param.alignment": "measured", "param.alignment_values": values})


def literal_fields() -> list[tuple[str, tuple[str, ...]]]:
    """(dotted key, choices) of every Literal-typed config field."""
    out = []
    for section, cls in typing.get_type_hints(RunConfig).items():
        if not dataclasses.is_dataclass(cls):
            continue
        for name, hint in typing.get_type_hints(cls).items():
            if typing.get_origin(hint) is typing.Literal:
                out.append((f"{section}.{name}", typing.get_args(hint)))
    return out


@pytest.mark.parametrize("key,choices", literal_fields(), ids=[k for k, _ in literal_fields()])
def test_each_choice_field_refuses_an_unknown_name_by_key(key: str, choices: tuple) -> None:
    assert choices and all(isinstance(c, str) for c in choices)
    with pytest.raises(ConfigError, match=rf"^{key}: unknown value 'bogus'; choose one of"):
        RunConfig().replace(**{key: "bogus"})


def test_environment_checks_wait_for_validate(tmp_path: Path) -> None:
    """Files are checked at load (validate), so a config can name a file made later."""
    missing = tmp_path / "later.txt"
    cfg = RunConfig(data=DataConfig(path=str(missing)))
    with pytest.raises(ConfigError, match="data.path: no such file"):
        cfg.validate()
    missing.write_text("some text\n" * 100)
    assert cfg.validate() is cfg


def test_from_table_turns_integers_into_floats_where_floats_are_due() -> None:
    from hptransfer.sweep.spec import SweepSettings

    settings = config.from_table(SweepSettings, {"lock_timeout_s": 60, "workers": 2}, "sweep.")
    assert settings.lock_timeout_s == 60.0 and isinstance(settings.lock_timeout_s, float)
    with pytest.raises(ConfigError, match="sweep.workers: expected an integer"):
        config.from_table(SweepSettings, {"workers": 2.5}, "sweep.")


# ---------------------------------------------------------------------------------------------
# one definition of each choice set

CHOICE_SETS = {
    name: frozenset(typing.get_args(alias))
    for name, alias in vars(config).items()
    if typing.get_origin(alias) is typing.Literal
}

AWAITING = {("optim/__init__.py", CHOICE_SETS["WdMode"])}
"""Copies in files another branch of this round rewrites (the optimizer registry); each must
become ``typing.get_args(config.<Literal>)`` there. Listed so that the test fails once the copy
is gone and the entry can go too."""


def string_collections(path: Path) -> list[tuple[frozenset[str], int]]:
    """Every tuple, list or set literal of two or more strings in a source file (a Literal's
    subscript is one too), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2:
            if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                found.append((frozenset(e.value for e in node.elts), node.lineno))
    return found


def test_each_choice_set_is_defined_once() -> None:
    where: dict[frozenset[str], list[str]] = {s: [] for s in CHOICE_SETS.values()}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for values, line in string_collections(path):
            if values in where and (rel, values) not in AWAITING:
                where[values].append(f"{rel}:{line}")
    assert len(CHOICE_SETS) >= 15
    for name, values in CHOICE_SETS.items():
        # Literal[AlignmentPreset, "measured"], Literal[Anchor, "auto"]: built on another
        if name in ("AlignmentName", "AnchorChoice"):
            assert where[values] == [], where[values]
            continue
        assert len(where[values]) == 1 and where[values][0].startswith("config/choices.py:"), (
            f"{name} {sorted(values)} is written out at {where[values]}; derive it from "
            f"config.{name} with typing.get_args"
        )
    for rel, values in AWAITING:
        assert values in {v for v, _ in string_collections(SRC / rel)}, f"{rel}: drop AWAITING"
