"""Sweep specs: a TOML file -> a validated :class:`SweepSpec` -> a deterministic run list.

A spec has three tables, optionally a list of cases and a [halving] table::

    [base]                    # a run config: nested tables as in a recipe, or
    recipe = "quickstart.toml"    # a recipe path (relative to the spec) plus overrides
    model.depth = 1

    [grid]                    # dotted config key -> list of values
    model.width = [32, 64, 128]
    param.name = ["mup", "sp"]
    optimizer.lr = {min = 2e-4, max = 3e-2, step = "2^(1/2)"}   # or a list; `lr` is an alias

    [sweep]                   # sweep-level settings (see SweepSettings)
    executor = "local"
    workers = 2
    adaptive = true
    tokens_per_param = 20

    [halving]                 # optional: stop hopeless LR points early (see halving.py)
    margin = 0.1

    [[cases]]                 # zipped settings: each case is crossed with the grid
    param.name = "sp"
    param.lr_exponents = "global"
    [[cases]]
    param.name = "mup"
    optimizer.lr = {min = 1e-3, max = 1e-1, step = "2^(1/2)"}   # a case's own LR grid

Expansion is: for each case in order, the product over grid keys in a fixed order (keys sorted
by name, except that seed and then optimizer.lr vary fastest). A case sets single values, and
may replace the grid's LR list with its own (SGD and Adam need different LR ranges).
Everything is checked before any run starts; bad input raises a one-line :class:`ConfigError`.
This module does not import torch unless ``tokens_per_param`` asks for parameter counts.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hptransfer.config import (
    DEFAULT_REFINE,
    ConfigError,
    Executor,
    Refine,
    RunConfig,
    apply_overrides,
    check_fields,
    check_keys,
    flatten,
    from_table,
    read_toml,
)
from hptransfer.locks import HEARTBEAT_S
from hptransfer.sweep.halving import Halving

LR_KEY = "optimizer.lr"
HEARTBEATS_PER_TIMEOUT = 3
"""A lock timeout spans at least this many heartbeat periods (locks.HEARTBEAT_S)."""
_RANGE_KEYS = {"min", "max", "step"}


@dataclass(frozen=True)
class SweepSettings:
    """The ``[sweep]`` table."""

    executor: Executor = "local"
    """local (worker processes on this machine) or ray (Ray core tasks)."""
    workers: int = 1
    """Concurrent runs."""
    threads_per_run: int = 1
    """torch threads of each run, whatever the number of workers: a run's losses depend on its
    thread count (reduction order), never on how many runs go beside it."""
    address: str = ""
    """Ray cluster address ("auto" or host:port); empty starts a local Ray instance."""
    adaptive: bool = False
    """Extend each (width, setting) LR grid adaptively ([E]'s protocol, see search.py)."""
    lr_refine: str = "2^(1/4)"
    """Finest spacing the adaptive search refines the optimum to; "2^(1/2)" stays on the
    half-octave lattice it extends on."""
    refine: Refine = DEFAULT_REFINE
    """How the adaptive search refines around the best LR: neighbours (both neighbours of the
    best at 2^(1/2), then at lr_refine) or fit (the optimum estimator's vertex on the lr_refine
    lattice, one LR a round; see search.py)."""
    tokens_per_param: float = 0.0
    """If > 0: train.steps per width = ceil(tpp * non-embedding params / (batch * seq_len))."""
    lock_timeout_s: float = 600.0
    """A run lock whose heartbeat is older than this is taken over."""
    retries: int = 1
    """Times a run whose worker process died is resubmitted before it is recorded as failed."""
    devices: str = ""
    """Devices the local executor places runs on, comma-separated ("cuda:0,cuda:1"); each run's
    train.device is replaced by the device it is given. Empty: every run on its own device."""
    runs_per_device: int = 1
    """Runs at once on each device of ``devices`` (fewer where a device reports too little free
    memory); the Ray executor requests 1/runs_per_device of a GPU per run."""

    def __post_init__(self) -> None:
        check_fields(self, "sweep.")
        if self.workers < 1:
            raise ConfigError(f"sweep.workers must be >= 1, got {self.workers}")
        if self.threads_per_run < 1:
            raise ConfigError(f"sweep.threads_per_run must be >= 1, got {self.threads_per_run}")
        if self.tokens_per_param < 0:
            raise ConfigError(f"sweep.tokens_per_param must be >= 0, got {self.tokens_per_param}")
        least = HEARTBEATS_PER_TIMEOUT * HEARTBEAT_S
        if self.lock_timeout_s < least:
            raise ConfigError(
                f"sweep.lock_timeout_s must be >= {least:g} s ({HEARTBEATS_PER_TIMEOUT} heartbeat "
                f"periods of {HEARTBEAT_S:g} s), got {self.lock_timeout_s}"
            )
        if self.retries < 0:
            raise ConfigError(f"sweep.retries must be >= 0, got {self.retries}")
        if self.runs_per_device < 1:
            raise ConfigError(f"sweep.runs_per_device must be >= 1, got {self.runs_per_device}")
        if self.devices and not all(d.strip() for d in self.devices.split(",")):
            raise ConfigError(f"sweep.devices: expected e.g. cuda:0,cuda:1, got {self.devices!r}")
        if parse_step(self.lr_refine) > 2**0.5 + 1e-12:
            raise ConfigError(f"sweep.lr_refine must be 2^(1/4) or 2^(1/2), got {self.lr_refine!r}")

    @property
    def concurrent_runs(self) -> int:
        """Runs at once: runs_per_device on each of ``devices``, else ``workers``."""
        if self.devices:
            return len(self.devices.split(",")) * self.runs_per_device
        return self.workers


@dataclass(frozen=True)
class Run:
    """One expanded run: its config and the swept values that produced it."""

    config: RunConfig
    values: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.config.run_id()

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "values": self.values, "config": self.config.to_dict()}


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep: the base config, the grid (ordered), and the sweep settings."""

    base: RunConfig
    grid: dict[str, list[Any]]
    settings: SweepSettings = field(default_factory=SweepSettings)
    text: str = ""
    """The spec file's text, stored as DIR/sweep.toml."""
    cases: tuple[dict[str, Any], ...] = ({},)
    """Zipped settings (``[[cases]]``), each crossed with the grid; its LR list replaces the
    grid's."""
    halving: Halving | None = None
    """Successive halving (``[halving]``), or None: every run goes to its last step."""

    def settings_key(self, run: Run) -> tuple[tuple[str, Any], ...]:
        """What identifies an LR search: every swept value except the LR and the seed."""
        return tuple((k, _hashable(v)) for k, v in run.values.items() if k not in (LR_KEY, "seed"))

    def expand(self) -> list[Run]:
        """The runs of the grid, in a deterministic order (no duplicates)."""
        runs: list[Run] = []
        seen: set[str] = set()
        steps_cache: dict[tuple, int] = {}
        for case in self.cases:
            for values in self._combos(case):
                cfg = self.base.replace(**values).validate()
                if self.settings.tokens_per_param > 0:
                    steps = horizon_steps(cfg, self.settings.tokens_per_param, steps_cache)
                    cfg = cfg.replace(**{"train.steps": steps})
                    values["train.steps"] = steps
                run = Run(cfg, values)
                if run.run_id not in seen:
                    seen.add(run.run_id)
                    runs.append(run)
        return runs

    def _combos(self, case: dict[str, Any]) -> list[dict[str, Any]]:
        """The swept values of one case: its fixed values, then the grid's product."""
        grid = dict(self.grid)
        if LR_KEY in case:
            grid[LR_KEY] = case[LR_KEY]
        grid = {k: grid[k] for k in _order(list(grid))}
        fixed = {k: v for k, v in case.items() if k != LR_KEY}
        return [{**fixed, **dict(zip(grid, combo))} for combo in itertools.product(*grid.values())]

    def run_at(self, template: Run, lr: float) -> Run:
        """The run of ``template``'s setting and seed at another learning rate."""
        values = {**template.values, LR_KEY: lr}
        return Run(template.config.replace(**{LR_KEY: lr}), values)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _order(keys: list[str]) -> list[str]:
    last = [k for k in ("seed", LR_KEY) if k in keys]
    return sorted(k for k in keys if k not in last) + last


def parse_step(text: Any) -> float:
    """An LR grid step: "2^(1/2)", "2^(1/4)", "2^1", "2^2" or the number itself.

    It must be a power of 2^(1/4) above 1, so every grid stays on the 2^(1/4) lattice that
    the adaptive search refines on.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        exponent = math.log2(text) if text > 0 else -1.0
    else:
        m = re.fullmatch(r"\s*2\s*\^\s*\(?\s*(\d+)\s*(?:/\s*(\d+))?\s*\)?\s*", str(text))
        if not m:
            raise ConfigError(f'lr step: expected a power of 2 like "2^(1/2)", got {text!r}')
        exponent = int(m.group(1)) / int(m.group(2) or 1)
    quarters = exponent * 4
    if exponent <= 0 or abs(quarters - round(quarters)) > 1e-9:
        raise ConfigError(f"lr step must be 2^(k/4) with k >= 1, got {text!r}")
    return 2.0 ** (round(quarters) / 4)


def round_lr(lr: float) -> float:
    """LRs rounded to 12 significant digits: stable run ids, readable configs."""
    return float(f"{lr:.12g}")


def lr_range(table: dict[str, Any]) -> list[float]:
    """``{min, max, step}`` -> [min, min*step, ...] up to max (inclusive, within 1e-9)."""
    missing = _RANGE_KEYS - set(table)
    extra = set(table) - _RANGE_KEYS
    if missing or extra:
        raise ConfigError(
            f"lr range needs exactly min, max, step; got {', '.join(sorted(table)) or 'nothing'}"
        )
    lo, hi = table["min"], table["max"]
    for name, v in (("min", lo), ("max", hi)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise ConfigError(f"lr range {name} must be a positive finite number, got {v!r}")
    if hi < lo:
        raise ConfigError(f"lr range max {hi} is below min {lo}")
    step = parse_step(table["step"])
    n = math.floor(math.log(hi / lo) / math.log(step) + 1e-9)
    return [round_lr(lo * step**i) for i in range(n + 1)]


def _grid_items(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested grid tables -> dotted keys; an {min, max, step} table is an LR range."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and not (set(value) & _RANGE_KEYS):
            out.update(_grid_items(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _lr_values(where: str, value: Any) -> list[Any]:
    """An LR grid given as a list or a {min, max, step} range, rounded for stable run ids."""
    if isinstance(value, dict):
        value = lr_range(value)
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of values, got {value!r}")
    if not value:
        raise ConfigError(f"{where}: empty list")
    return [round_lr(v) if isinstance(v, float) else v for v in value]


def parse_grid(table: dict[str, Any]) -> dict[str, list[Any]]:
    """Validate the ``[grid]`` table; return dotted key -> values in expansion order."""
    grid: dict[str, list[Any]] = {}
    for key, value in _grid_items(table).items():
        dotted = LR_KEY if key == "lr" else key
        if dotted in grid:
            raise ConfigError(f"grid: {dotted} is given twice")
        if dotted == LR_KEY:
            grid[dotted] = _lr_values(f"grid.{dotted}", value)
            continue
        if isinstance(value, dict):
            raise ConfigError(f"grid.{dotted}: a {{min, max, step}} range is only for the LR")
        if not isinstance(value, list):
            raise ConfigError(f"grid.{dotted}: expected a list of values, got {value!r}")
        if not value:
            raise ConfigError(f"grid.{dotted}: empty list")
        grid[dotted] = value
    return {k: grid[k] for k in _order(list(grid))}


def parse_cases(items: Any, grid: dict[str, list[Any]]) -> tuple[dict[str, Any], ...]:
    """Validate ``[[cases]]``: a list of tables of single values (the LR may be a list/range)."""
    if items is None:
        return ({},)
    if not isinstance(items, list) or not items or not all(isinstance(c, dict) for c in items):
        raise ConfigError("cases: expected one or more [[cases]] tables")
    cases = []
    for i, table in enumerate(items, 1):
        case: dict[str, Any] = {}
        for key, value in _grid_items(table).items():
            dotted = LR_KEY if key == "lr" else key
            if dotted == LR_KEY:
                lrs = value if isinstance(value, (list, dict)) else [value]
                value = _lr_values(f"cases[{i}].{dotted}", lrs)
            elif dotted in grid:
                raise ConfigError(f"cases[{i}].{dotted} is also in [grid]; set it in one place")
            elif isinstance(value, dict):
                raise ConfigError(f"cases[{i}].{dotted}: a range is only for the LR")
            case[dotted] = value
        cases.append(case)
    return tuple(cases)


def parse_settings(table: dict[str, Any]) -> SweepSettings:
    """The ``[sweep]`` table, checked by name, type and range."""
    known = [f.name for f in fields(SweepSettings)]
    for key in table:
        if key not in known:
            raise ConfigError(f"unknown sweep setting {key!r}; known: {', '.join(known)}")
    return from_table(SweepSettings, table, "sweep.")


def parse_halving(table: Any) -> Halving | None:
    """The ``[halving]`` table (absent: None), checked by name, type and range."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError("[halving] must be a table")
    known = [f.name for f in fields(Halving)]
    for key in table:
        if key not in known:
            raise ConfigError(f"unknown halving setting {key!r}; known: {', '.join(known)}")
    return from_table(Halving, table, "halving.")


def parse_base(table: dict[str, Any], relative_to: Path | None) -> RunConfig:
    """``[base]``: nested config tables, optionally on top of ``recipe = "path"``."""
    table = dict(table)
    dotted: dict[str, Any] = {}
    recipe = table.pop("recipe", None)
    if recipe is not None:
        if not isinstance(recipe, str):
            raise ConfigError(f"base.recipe: expected a path, got {recipe!r}")
        path = Path(recipe)
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        dotted.update(flatten(read_toml(path)))
    dotted.update(flatten(table))
    return apply_overrides(RunConfig(), dotted).validate()


def parse_spec(table: dict[str, Any], relative_to: Path | None = None, text: str = "") -> SweepSpec:
    """A validated spec from the parsed TOML tables; expands it once to check every run."""
    unknown = set(table) - {"base", "grid", "sweep", "cases", "halving"}
    if unknown:
        raise ConfigError(
            f"unknown sweep spec table(s) {', '.join(sorted(unknown))}; "
            "use base, grid, sweep, cases, halving"
        )
    for name in ("base", "grid", "sweep"):
        if not isinstance(table.get(name, {}), dict):
            raise ConfigError(f"[{name}] must be a table")
    grid = parse_grid(table.get("grid", {}))
    spec = SweepSpec(
        base=parse_base(table.get("base", {}), relative_to),
        grid=grid,
        settings=parse_settings(table.get("sweep", {})),
        text=text,
        cases=parse_cases(table.get("cases"), grid),
        halving=parse_halving(table.get("halving")),
    )
    check_keys([*spec.grid, *(key for case in spec.cases for key in case)])
    if spec.settings.adaptive and not all(LR_KEY in spec.grid or LR_KEY in c for c in spec.cases):
        raise ConfigError("sweep.adaptive needs an LR grid (grid.optimizer.lr) to start from")
    spec.expand()  # every config validated (e.g. a non-positive LR) before anything runs
    return spec


def load_spec(path: str | Path, settings: dict[str, Any] | None = None) -> SweepSpec:
    """Read and validate a sweep spec file; ``settings`` override its ``[sweep]`` table."""
    path = Path(path)
    table = read_toml(path)
    if settings:
        table = {**table, "sweep": {**table.get("sweep", {}), **settings}}
    return parse_spec(table, relative_to=path.parent, text=path.read_text())


def horizon_steps(cfg: RunConfig, tokens_per_param: float, cache: dict | None = None) -> int:
    """Steps that give ``tokens_per_param`` tokens per non-embedding parameter."""
    cache = {} if cache is None else cache
    key = (cfg.model.name, cfg.model.factory, cfg.model.width, cfg.model.depth, cfg.model.head_dim,
           cfg.train.seq_len)  # fmt: skip
    if key not in cache:
        cache[key] = non_embedding_params(cfg)
    n = cache[key]
    return max(1, math.ceil(tokens_per_param * n / (cfg.train.batch_size * cfg.train.seq_len)))


def non_embedding_params(cfg: RunConfig) -> int:
    """Parameters outside nn.Embedding modules, counted on the meta device (no memory)."""
    import torch
    from torch import nn

    from hptransfer.assemble import model_factory

    with torch.device("meta"):
        model = model_factory(cfg)(cfg.model.width)
    embedded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
                for p in m.parameters()}  # fmt: skip
    return sum(p.numel() for p in model.parameters() if id(p) not in embedded)
