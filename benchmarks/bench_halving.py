"""Successive halving vs dense grids, replayed from the dense grids' learning curves.

Draft: grid definitions and generation.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from hptransfer.experiments.demo import RECIPE
from hptransfer.sweep import parse_spec, run_sweep

DENSE_STEP = "2^(1/4)"


def _demo() -> dict[str, Any]:
    table = tomllib.loads(RECIPE.read_text())
    table["base"]["train"].update({"eval_every": 10})
    table["grid"]["model"]["width"] = [32, 64]
    table["grid"]["optimizer"]["lr"] = {"min": 2**-10, "max": 2**-2, "step": "2^2"}
    return table


def _small(
    case: dict[str, Any], lr: tuple[float, float], steps: int = 45, batch: int = 8,
    widths: tuple[int, ...] = (32, 64), **base: Any,
) -> dict[str, Any]:  # fmt: skip
    train = {"steps": steps, "batch_size": batch, "seq_len": 64, "warmup_steps": steps // 10,
             "schedule": "cosine", "eval_every": steps // 9, "eval_batches": 8}  # fmt: skip
    b: dict[str, Any] = {"model": {"depth": 2, "head_dim": 16}, "param": {"base_width": 32},
                         "optimizer": {"name": "adam"}, "train": train}  # fmt: skip
    for dotted, value in base.items():
        section, key = dotted.split("__")
        b[section][key] = value
    return {
        "base": b,
        "grid": {"model": {"width": list(widths)},
                 "optimizer": {"lr": {"min": lr[0], "max": lr[1], "step": "2^2"}}},
        "cases": [case],
        "sweep": {"workers": 2, "adaptive": True, "lr_refine": "2^(1/4)"},
    }  # fmt: skip


GRIDS = {
    "demo": _demo,
    "sp_global": lambda: _small({"param": {"name": "sp", "lr_exponents": "global"}},
                                (2**-12, 2**-2), steps=90, batch=16, widths=(32, 128)),  # fmt: skip
    "muon": lambda: _small({"param": {"name": "mup"}}, (2**-10, 2**-2), optimizer__name="muon"),
    "plateau": lambda: _small({"param": {"name": "mup"}}, (2**-10, 2**0),
                              train__diverge_factor=1e6, train__grad_clip=1.0),  # fmt: skip
}


def dense_table(name: str) -> dict[str, Any]:
    table = copy.deepcopy(GRIDS[name]())
    table["grid"]["optimizer"]["lr"] = {**table["grid"]["optimizer"]["lr"], "step": DENSE_STEP}
    table["sweep"]["adaptive"] = False
    return table


def dense(name: str, root: Path) -> Path:
    out = root / name / "dense"
    run_sweep(parse_spec(dense_table(name)), out, quiet=True)
    return out
