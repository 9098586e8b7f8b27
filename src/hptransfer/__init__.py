"""hptransfer: width-scaling parameterizations and hyperparameter transfer for PyTorch.

Public API (imported lazily, so `import hptransfer` and `hptransfer --help` stay light):

    RunConfig, load_recipe            configuration (hptransfer.config)
    infer_roles, roles_from_factory   which parameters grow with width (hptransfer.param.roles)
    make_rule, solve_c                the rules and the exponent solver (hptransfer.param.rules)
    parameterize                      re-init + multipliers + param groups (hptransfer.param.apply)
    measure_init                      a model's own init per parameter (hptransfer.param.init)
    export_folded                     multipliers folded into the weights (hptransfer.param.export)
    build_optimizer                   every optimizer by name (hptransfer.optim)
    train                             one run (hptransfer.train)
    coord_check                       activation sizes across widths (hptransfer.analysis.coord)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "hptransfer.config",
    "load_recipe": "hptransfer.config",
    "ConfigError": "hptransfer.config",
    "infer_roles": "hptransfer.param.roles",
    "roles_from_factory": "hptransfer.param.roles",
    "make_rule": "hptransfer.param.rules",
    "solve_c": "hptransfer.param.rules",
    "parameterize": "hptransfer.param.apply",
    "measure_init": "hptransfer.param.init",
    "export_folded": "hptransfer.param.export",
    "build_optimizer": "hptransfer.optim",
    "train": "hptransfer.train",
    "coord_check": "hptransfer.analysis.coord",
    "load_runs": "hptransfer.store",
    "run_sweep": "hptransfer.sweep",
    "build_report": "hptransfer.report",
    "find_optima": "hptransfer.analysis",
    "fit_transfer": "hptransfer.analysis",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hptransfer' has no attribute {name!r}")
