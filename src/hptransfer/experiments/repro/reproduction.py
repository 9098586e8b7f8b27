"""What a reproduction is, and what its analyses read from a stored run.

A reproduction is one or more sweep specs under ``hptransfer/recipes/repro/`` (``NAME.toml``
plus, when a product grid cannot express it, ``NAME-PART.toml`` specs run into the same
results directory), and an analysis that turns the results into figures and numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from hptransfer.analysis.transfer import Transfer
    from hptransfer.config import RunConfig
    from hptransfer.experiments.repro.verdict import Finding
    from hptransfer.param.roles import RoleTable

Record = dict[str, Any]


@dataclass(frozen=True)
class Reproduction:
    """One reproduction: its specs, the columns that name a setting, and its analysis."""

    name: str
    paper: str
    claim: str
    specs: tuple[str, ...]
    """Spec file names under the recipes directory, run in this order into one directory."""
    by: tuple[str, ...]
    """Columns of load_runs() that identify a setting (one LR curve per x)."""
    analyse: Callable[[Reproduction, pd.DataFrame, Path], Record]
    """(repro, runs, results dir) -> numbers; writes the figures into the results dir."""
    label: Callable[[Record], str]
    """A setting's by-values -> its name in tables and legends."""
    x: str = "width"
    """The scaled dimension: width, or model.depth for depth transfer."""

    claims: Callable[[Transfer, list[Record]], list[Finding]] | None = None
    """(the transfer verdict, the settings' records) -> the claim's parts, checked on their
    seed intervals (experiments.repro.verdict); None: the reproduction has no verdict yet."""

    prepare: Callable[[dict[str, Any], Path | None, bool], dict[str, Any]] | None = None
    """(a spec's TOML tables, the results dir or None, smoke) -> the tables to run: a step
    before the sweep (e_constants tunes its constants here); None: the spec as it is."""

    measure: Callable[[Reproduction, pd.DataFrame, Path], None] | None = None
    """(repro, runs, results dir) -> None: a measurement after the sweeps that the analysis
    reads from the results dir (e_epsilon's gradient-RMS probe); run with the sweeps, never
    by ``--analyse-only``. None: nothing beyond the runs."""

    style: Callable[[Record], Record] | None = None
    """A setting's record -> matplotlib line keywords in the summary figure (None: cycle)."""

    @property
    def x_key(self) -> str:
        """The config key that sweeps x."""
        return "model.width" if self.x == "width" else self.x


def run_config(run_dir: Path) -> RunConfig:
    """A stored run's config."""
    from hptransfer.config import from_dict
    from hptransfer.store import read_json

    return from_dict(read_json(run_dir / "config.json"))


def role_table(run_dir: Path) -> tuple[RunConfig, RoleTable]:
    """A stored run's config and its RoleTable (model built on the meta device)."""
    from hptransfer.assemble import model_factory
    from hptransfer.param.roles import roles_from_factory

    cfg = run_config(run_dir)
    p = cfg.param
    table = roles_from_factory(
        model_factory(cfg), cfg.model.width, p.base_width, overrides=p.overrides, tied=p.tied
    )
    return cfg, table
