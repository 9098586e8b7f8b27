"""``hptransfer repro NAME``: the three papers' findings reproduced at small scale.

A reproduction is one or more sweep specs under ``recipes/repro/`` (``NAME.toml`` plus, when a
product grid cannot express it, ``NAME-PART.toml`` specs run into the same results directory),
and an analysis that turns the results into figures (``NAME.png``; for LR sweeps also the
loss-vs-LR panels ``NAME-sweep.png``) and numbers (``NAME.json``, printed as a Markdown table).
Specs of one reproduction sweep the same keys, so ``hptransfer report DIR`` reads the merged
directory too. Re-running resumes (finished runs are skipped) and redoes the analysis.

``--smoke`` runs every spec at a reduced size (widths 16 and 32, depths 1 and 2, the lowest and
highest LR of the grid, a few steps, no adaptive search), in this process, so that the whole
pipeline is exercised in seconds; its numbers mean nothing. The full-size numbers, the papers'
claims and the commands are in docs/reproductions.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from hptransfer.config import ConfigError
from hptransfer.sweep.executors import Executor
from hptransfer.sweep.worker import RunTask, execute

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "repro"
"""The specs of a source checkout; ``--recipes DIR`` points elsewhere."""
DEFAULT_ROOT = Path("hpt-results") / "repro"
LOSS = "final_eval_loss"

SMOKE_BASE: dict[str, Any] = {
    "train.steps": 4,
    "train.warmup_steps": 1,
    "train.eval_every": 4,
    "train.eval_batches": 1,
    "train.batch_size": 4,
    "train.seq_len": 16,
    "model.head_dim": 8,
    "param.base_width": 16,
}
"""Base overrides of ``--smoke``: a few steps of a tiny model."""
SMOKE_GRID: dict[str, list[Any]] = {"model.width": [16, 32], "model.depth": [1, 2]}
"""Grid values of ``--smoke`` for the keys a spec sweeps (other keys keep every value)."""

FIT_THRESHOLD = 1.03
"""The quadratic in ln(LR) that locates an optimum is fitted to the grid points within this
factor of the best loss (at least 3). analysis.find_optima's default, 1.35 from [K]'s figures,
spans nearly the whole LR window at these losses (~2.5 nats), where the loss curve is far from
a parabola and the vertex lands off the measured minimum; 3% keeps the fit local."""

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

    style: Callable[[Record], Record] | None = None
    """A setting's record -> matplotlib line keywords in the summary figure (None: cycle)."""

    @property
    def x_key(self) -> str:
        """The config key that sweeps x."""
        return "model.width" if self.x == "width" else self.x


# ---------------------------------------------------------------------------------------------
# Specs and runs


def spec_paths(repro: Reproduction, recipes: Path = RECIPES) -> list[Path]:
    """The spec files of ``repro``; ConfigError naming the first one that is missing."""
    paths = [recipes / name for name in repro.specs]
    for path in paths:
        if not path.is_file():
            raise ConfigError(
                f"no reproduction spec {path}: run from a source checkout or pass --recipes DIR"
            )
    return paths


def smoke_table(table: dict[str, Any]) -> dict[str, Any]:
    """A spec's TOML tables shrunk to a smoke run (other tables, e.g. [[cases]], kept as
    they are): SMOKE_BASE on top of its base, the swept
    widths and depths replaced by SMOKE_GRID, its LR grid cut to its lowest and highest LR,
    alignment probes every 2 steps if on, no adaptive search, fixed steps."""
    from hptransfer.config import flatten
    from hptransfer.sweep.spec import LR_KEY, parse_grid

    base = {**flatten(table.get("base", {})), **SMOKE_BASE}
    if base.get("train.align_every"):
        base["train.align_every"] = 2
    if base.get("param.depth_base"):
        base["param.depth_base"] = 1
    grid = parse_grid(table.get("grid", {}))
    for key, values in SMOKE_GRID.items():
        if key in grid:
            grid[key] = list(values)
    if LR_KEY in grid:
        grid[LR_KEY] = sorted({min(grid[LR_KEY]), max(grid[LR_KEY])})
    sweep = {**table.get("sweep", {}), "adaptive": False, "workers": 1, "tokens_per_param": 0}
    return {**table, "base": base, "grid": grid, "sweep": sweep}  # [[cases]] kept


def load_specs(
    repro: Reproduction, recipes: Path = RECIPES, smoke: bool = False,
    workers: int | None = None,
) -> list:  # fmt: skip
    """The parsed SweepSpecs of ``repro`` (shrunk with ``smoke``; ``workers`` overrides)."""
    from hptransfer.config import read_toml
    from hptransfer.sweep.spec import parse_spec

    specs = []
    for path in spec_paths(repro, recipes):
        table = read_toml(path)
        if smoke:
            table = smoke_table(table)
        if workers is not None:
            table = {**table, "sweep": {**table.get("sweep", {}), "workers": workers}}
        specs.append(parse_spec(table, relative_to=path.parent, text=path.read_text()))
    return specs


class InlineExecutor(Executor):
    """Runs each task in this process as it is submitted, on one torch thread. Smoke runs
    take a fraction of a second, less than starting a worker process (which imports torch)."""

    workers = 1
    threads = 1

    def __init__(self) -> None:
        self._done: list[tuple[RunTask, Record]] = []

    def submit(self, task: RunTask) -> None:
        self._done.append((task, execute(task)))

    def wait(self, timeout: float) -> list[tuple[RunTask, Record]]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        self._done.clear()


def default_out(name: str, smoke: bool = False) -> Path:
    return DEFAULT_ROOT / (f"{name}-smoke" if smoke else name)


def run_reproduction(
    name: str,
    out: str | Path | None = None,
    *,
    smoke: bool = False,
    workers: int | None = None,
    recipes: Path = RECIPES,
    quiet: bool = False,
    stream: TextIO | None = None,
    analyse_only: bool = False,
) -> Record:
    """Run (or resume) every spec of reproduction ``name`` into one directory, analyse it and
    print the numbers as Markdown; return them. The specs share one executor (one pool).
    ``analyse_only`` skips the runs and analyses what the directory holds."""
    from hptransfer.sweep.executors import make_executor
    from hptransfer.sweep.runner import run_sweep

    repro = get(name)
    stream = stream if stream is not None else sys.stdout
    root = Path(out) if out is not None else default_out(name, smoke)
    if analyse_only:
        if not (root / "runs").is_dir():
            raise ConfigError(f"--analyse-only: no runs in {root}")
    else:
        specs = load_specs(repro, recipes, smoke, workers)
        settings = specs[0].settings
        executor: Executor = (
            InlineExecutor()
            if smoke
            else make_executor(settings.executor, settings.workers, settings.address)
        )
        failed = 0
        try:
            for spec in specs:
                failed += run_sweep(spec, root, quiet=quiet, executor=executor).failed
        finally:
            executor.close()
        if failed:
            raise ConfigError(f"{failed} run(s) failed; see {root}/runs/*/summary.json")
    numbers = analyse(repro, load_results(repro, root), root)
    stream.write(markdown(repro, numbers))
    return numbers


def load_results(repro: Reproduction, root: Path) -> pd.DataFrame:
    """load_runs(root) with the setting columns (``repro.by`` and x) read from each run's
    config.json: DIR/sweep.json lists only the last spec's runs and keys, so the configs on
    disk are what counts."""
    from hptransfer.store import load_runs, read_json

    df = load_runs(root)
    df = df[df["status"].isin(["ok", "diverged", "failed"])].reset_index(drop=True)
    for key in {*repro.by, repro.x_key} - set(df.columns) - {"parameterization", "optimizer"}:
        values = []
        for run_id in df["run_id"]:
            node: Any = read_json(root / "runs" / str(run_id) / "config.json")
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            values.append(node)
        df[key] = values
    return df


# ---------------------------------------------------------------------------------------------
# Analysis shared by the LR-transfer reproductions


def _scaled(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """Finished runs with the scaled dimension ``x`` in the width column (analysis keys)."""
    data = df[df["status"].isin(["ok", "diverged"])].copy()
    if x != "width":
        data["width"] = data[x]
    return data.astype({"width": int})


def transfer_table(
    df: pd.DataFrame, by: Sequence[str], label: Callable[[Record], str], x: str = "width"
) -> tuple[pd.DataFrame, pd.DataFrame, list[Record]]:
    """Optima per (setting, x), fits per setting, and one record of numbers per setting.

    ``x`` is the scaled dimension (a column of ``df``: width, or model.depth for depth
    transfer); it stands in for width in find_optima / fit_transfer, so "per doubling" means
    per doubling of x. A record holds the setting's label and by-values, the x values, the
    optimal LR (interpolated, log2) and the loss there per x, which optima are unbracketed,
    the optimum's move in log2 per doubling of x, the penalty (percent of the best loss) of
    reusing the smallest x's optimum at the largest, and [K]'s E, kappa and R_inf (relative to
    the lowest L_inf among the settings given). The fits gain a ``setting`` column (the label).
    """
    from hptransfer.analysis import find_optima, fit_transfer
    from hptransfer.report import _plain

    by = list(by)
    data = _scaled(df, x)
    optima = find_optima(data, by, LOSS, threshold=FIT_THRESHOLD, n_boot=0)
    fits = fit_transfer(optima, data, by, loss=LOSS)
    records = []
    for _, fit in fits.iterrows():
        key = {c: _plain(fit[c]) for c in by}
        mine = optima
        for c, v in key.items():
            mine = mine[mine[c] == v]
        mine = mine.sort_values("width")
        records.append(
            {
                "setting": label(key),
                **key,
                x: [int(w) for w in mine["width"]],
                "log2_lr_opt": [round(math.log2(v), 3) for v in mine["lr_interp"]],
                "loss_opt": [round(float(v), 4) for v in mine["loss_interp"]],
                "at_edge": [bool(v) for v in mine["at_edge"]],
                "drift_per_doubling": _round(fit["drift_per_doubling"]),
                "transfer_penalty_pct": _round(fit["transfer_penalty_pct"]),
                "extrap_penalty_pct": _round(fit["extrap_penalty_pct"]),
                "E": _round(fit["E"]),
                "kappa": _round(fit["kappa"]),
                "R_inf": _round(fit["R_inf"]),
            }
        )
    fits["setting"] = [r["setting"] for r in records]
    return optima, fits, records


def _round(value: Any, digits: int = 4) -> float | None:
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def _save(fig: Figure, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def _sweep_figure(repro: Reproduction, df: pd.DataFrame, root: Path, records: list[Record]) -> str:
    """Loss against LR, one panel per setting (titled by its label), one line per x; the
    stars are the records' optima (this module's fit window, see FIT_THRESHOLD)."""
    from hptransfer.plots import plot_lr_sweep

    data = _scaled(df, repro.x)
    data["setting"] = [repro.label(dict(zip(repro.by, row)))
                       for row in data[list(repro.by)].itertuples(index=False)]  # fmt: skip
    fig = plot_lr_sweep(data, ["setting"], LOSS)
    by_label = {r["setting"]: r for r in records}
    for ax in fig.axes:
        rec = by_label.get(ax.get_title())
        if rec is None:
            continue
        for artist in [c for c in ax.collections if c.get_gid() == "optimum"]:
            artist.remove()
        color = {line.get_label(): line.get_color() for line in ax.get_lines()}
        ax.scatter([2.0**v for v in rec["log2_lr_opt"]], rec["loss_opt"], marker="*", s=70,
                   zorder=3, c=[color[str(w)] for w in rec[repro.x]], edgecolors="k",
                   linewidths=0.5)  # fmt: skip
    if repro.x != "width":
        for legend in fig.legends:
            legend.set_title(repro.x)
    return _save(fig, root / f"{repro.name}-sweep.png")


def _optima_panels(
    axes: Sequence[Axes], records: list[Record], x: str = "width",
    style: Callable[[Record], Record] | None = None,
) -> None:  # fmt: skip
    """Two panels: log2 optimal LR against x, and the loss at it (hollow: not bracketed)."""
    ax_lr, ax_loss = axes
    for i, rec in enumerate(records):
        kw = style(rec) if style is not None else {"color": f"C{i % 10}", "marker": "o", "ms": 4}
        xs = rec[x]
        for ax, ys in ((ax_lr, rec["log2_lr_opt"]), (ax_loss, rec["loss_opt"])):
            ax.plot(xs, ys, lw=1.3, label=rec["setting"], **kw)
            edge = [j for j, e in enumerate(rec["at_edge"]) if e]
            ax.scatter([xs[j] for j in edge], [ys[j] for j in edge], s=70, marker="o",
                       facecolors="none", edgecolors="0.3", zorder=3)  # fmt: skip
    for ax, ylabel in ((ax_lr, "log2 optimal base LR"), (ax_loss, "eval loss at the optimum")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_lr.set_title("optimal LR (flat = transfers; ringed: not bracketed)", fontsize="medium")
    ax_loss.set_title("loss at the optimal LR", fontsize="medium")


def _summary_figure(
    repro: Reproduction, records: list[Record], root: Path,
    style: Callable[[Record], Record] | None = None,
) -> str:  # fmt: skip
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8), layout="constrained")
    _optima_panels(axes, records, repro.x, style)
    axes[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, root / f"{repro.name}.png")


def transfer_lines(records: list[Record], x: str) -> list[str]:
    """A Markdown table of transfer records: optimal LR and loss per x, drift, penalty."""
    lines = [
        f"| setting | {x} | log2 optimal LR | loss at optimum | drift / doubling "
        "| transfer penalty % |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        lrs = ", ".join(f"{v:.2f}" + ("*" if e else "")
                        for v, e in zip(r["log2_lr_opt"], r["at_edge"]))  # fmt: skip
        lines.append(
            f"| {r['setting']} | {', '.join(map(str, r[x]))} | {lrs} | "
            f"{', '.join(f'{v:.3f}' for v in r['loss_opt'])} | "
            f"{_fmt(r['drift_per_doubling'])} | {_fmt(r['transfer_penalty_pct'])} |"
        )
    lines.append("(* = optimum at the edge of the LR range tried: not bracketed)")
    return lines


def _finish(
    repro: Reproduction, root: Path, records: list[Record], figures: list[str],
    lines: list[str] | None = None,
) -> Record:  # fmt: skip
    """Write NAME.json; return the numbers (settings, figures, Markdown table lines)."""
    from hptransfer.store import write_json

    table = lines if lines is not None else transfer_lines(records, repro.x)
    numbers = {"name": repro.name, "settings": records, "figures": figures, "table": table}
    write_json(root / f"{repro.name}.json", numbers)
    return numbers


def analyse_transfer(repro: Reproduction, df: pd.DataFrame, root: Path) -> Record:
    """Optimal LR and loss per x for each setting, drift and penalty; two figures."""
    _, _, records = transfer_table(df, repro.by, repro.label, repro.x)
    figures = [
        _summary_figure(repro, records, root, repro.style),
        _sweep_figure(repro, df, root, records),
    ]
    return _finish(repro, root, records, figures)


# ---------------------------------------------------------------------------------------------
# [E] exponents: global LR vs per-layer exponents


def _e_exponents_label(key: Record) -> str:
    if key["param.lr_exponents"] == "global":
        return f"{key['parameterization']} global LR"
    return f"{key['parameterization']} per-layer ({key['param.alignment']} alignment)"


def _e_exponents_style(rec: Record) -> Record:
    colors = {"sp": "C0", "mup": "C1", "mfp": "C2"}
    if rec["param.lr_exponents"] == "global":
        ls, marker = "-", "o"
    else:
        ls, marker = ("--", "s") if rec["param.alignment"] == "full" else (":", "^")
    return {"color": colors.get(rec["parameterization"], "k"), "ls": ls, "marker": marker,
            "ms": 4}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# [E] epsilon: underflow with a constant epsilon, per-layer epsilon, Adam-atan2


def _e_epsilon_label(key: Record) -> str:
    if key["optimizer"] == "adam_atan2":
        return "adam-atan2 (no epsilon)"
    return f"adam, {key['param.eps_mode'].replace('_', '-')} epsilon"


def _read_metrics(run_dir: Path) -> list[Record]:
    with (run_dir / "metrics.jsonl").open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _role_table(run_dir: Path):
    """The run's config and its RoleTable (model built on the meta device)."""
    from hptransfer.assemble import model_factory
    from hptransfer.config import from_dict
    from hptransfer.param.roles import roles_from_factory
    from hptransfer.store import read_json

    cfg = from_dict(read_json(run_dir / "config.json"))
    p = cfg.param
    table = roles_from_factory(
        model_factory(cfg), cfg.model.width, p.base_width, overrides=p.overrides, tied=p.tied
    )
    return cfg, table


def underflow_by_role(run_dir: Path) -> dict[str, float]:
    """Fraction of coordinates with sqrt(v_hat) < eps per role, at the run's last logged step.

    metrics.jsonl holds ``underflow/<param name>`` per parameter at eval steps; a role's
    fraction is the mean over its parameters weighted by their sizes (so it is the fraction of
    the role's coordinates). Empty when the optimizer logs none (Adam-atan2 has no epsilon).
    """
    last: dict[str, float] = {}
    for record in _read_metrics(run_dir):
        found = {k[len("underflow/") :]: v for k, v in record.items()
                 if k.startswith("underflow/")}  # fmt: skip
        if found:
            last = found
    if not last:
        return {}
    _, roles = _role_table(run_dir)
    total: dict[str, float] = {}
    size: dict[str, float] = {}
    for name, fraction in last.items():
        entry = roles[name]
        n = float(math.prod(entry.shape))
        total[entry.role] = total.get(entry.role, 0.0) + fraction * n
        size[entry.role] = size.get(entry.role, 0.0) + n
    return {role: total[role] / size[role] for role in sorted(total)}


def _run_at(df: pd.DataFrame, by: Sequence[str], rec: Record, width: int, lr: float) -> str:
    """run_id of the finished run of setting ``rec`` at ``width`` and grid LR ``lr``."""
    import numpy as np

    runs = df[(df["status"] == "ok") & (df["width"] == width)]
    runs = runs[np.isclose(runs["lr"], lr, rtol=1e-9)]
    for c in by:
        runs = runs[runs[c] == rec[c]]
    return str(runs["run_id"].iloc[0])


def analyse_e_epsilon(repro: Reproduction, df: pd.DataFrame, root: Path) -> Record:
    """Transfer numbers per setting plus the underflow fraction per role at each width's
    optimal grid LR; figure: underflow, optimal LR and loss against width."""
    import matplotlib.pyplot as plt

    optima, _, records = transfer_table(df, repro.by, repro.label)
    lines = []
    for rec in records:
        mine = optima
        for c in repro.by:
            mine = mine[mine[c] == rec[c]]
        per_role: dict[str, list[float | None]] = {}
        for i, width in enumerate(rec["width"]):
            lr = float(mine.loc[mine["width"] == width, "lr_grid"].iloc[0])
            run = root / "runs" / _run_at(df, repro.by, rec, width, lr)
            for role, value in underflow_by_role(run).items():
                per_role.setdefault(role, [None] * len(rec["width"]))[i] = round(value, 4)
        rec["underflow"] = per_role
        for role in ("hidden", "output"):
            if role in per_role:
                shown = ", ".join("n/a" if v is None else f"{v:.3f}" for v in per_role[role])
                lines.append(f"| {rec['setting']} | {role} | {shown} |")

    fig, axes = plt.subplots(1, 3, figsize=(14.5, 3.8), layout="constrained")
    for i, rec in enumerate(records):
        for role, ls in (("hidden", "-"), ("output", "--")):
            if role in rec["underflow"]:
                axes[0].plot(rec["width"], rec["underflow"][role], ls, marker="o", ms=4,
                             color=f"C{i}", label=f"{rec['setting']}: {role}")  # fmt: skip
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("width")
    axes[0].set_ylabel("fraction with sqrt(v_hat) < eps")
    axes[0].set_title("underflow at the optimal LR, end of training", fontsize="medium")
    axes[0].grid(True, alpha=0.3)
    axes[0].legend(fontsize="x-small")
    _optima_panels(axes[1:], records)
    axes[2].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figures = [_save(fig, root / f"{repro.name}.png"), _sweep_figure(repro, df, root, records)]
    table = transfer_lines(records, "width") + [
        "",
        "| setting | role | underflow fraction per width (at the optimal grid LR) |",
        "|---|---|---|",
        *lines,
    ]
    return _finish(repro, root, records, figures, table)


# ---------------------------------------------------------------------------------------------
# [E] alignment over training


def _alignment_label(key: Record) -> str:
    return f"{key['parameterization']} + {key['optimizer']}"


def alignment_curves(run_dir: Path) -> tuple[dict[str, list[Record]], dict[str, Record]]:
    """A run's alignment probes per role: ``{role: [{step, alpha, omega, u}, ...]}`` (means
    over the role's layers at each probe step) and the means over the second half of training
    (``{role: {alpha, omega, u, n_probes, steps}}``), from ``align/<exponent>/<param>`` keys."""
    from hptransfer.analysis.alignment import average_by_role
    from hptransfer.probes.alignment import EXPONENTS

    cfg, table = _role_table(run_dir)
    roles = {e.name: e.role for e in table}
    metrics = _read_metrics(run_dir)
    probed = sorted({m["step"] + 1 for m in metrics if any(k.startswith("align/") for k in m)})
    curves: dict[str, list[Record]] = {}
    for t in probed:
        for role, values in average_by_role(metrics, roles, (t, t)).items():
            curves.setdefault(role, []).append({"step": t, **{e: values[e] for e in EXPONENTS}})
    return curves, average_by_role(metrics, roles, (cfg.train.steps // 2 + 1, None))


def analyse_alignment(repro: Reproduction, df: pd.DataFrame, root: Path) -> Record:
    """Per run (one LR, one width): alpha, omega and u of the hidden and output roles over
    training, and their means over the second half; figure: one row per setting, one panel
    per exponent, colour = width, line style = role."""
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    from hptransfer.probes.alignment import EXPONENTS

    runs = df[df["status"] == "ok"].sort_values([*repro.by, "width"])
    settings = list(runs.groupby(list(repro.by), sort=True))
    widths = sorted(int(w) for w in runs["width"].unique())
    color = {w: colormaps["viridis"](0.85 * (1 - i / max(1, len(widths) - 1)))
             for i, w in enumerate(widths)}  # fmt: skip
    fig, grid = plt.subplots(len(settings), 3, figsize=(13, 3.3 * len(settings)),
                             squeeze=False, layout="constrained")  # fmt: skip
    records, lines = [], []
    for row, (key, group) in zip(grid, settings):
        label = repro.label(dict(zip(repro.by, key if isinstance(key, tuple) else (key,))))
        for _, run in group.iterrows():
            width = int(run["width"])
            curves, late = alignment_curves(root / "runs" / str(run["run_id"]))
            for role, ls in (("hidden", "-"), ("output", "--")):
                points = curves.get(role, [])
                for ax, e in zip(row, EXPONENTS):
                    ax.plot([p["step"] for p in points], [p[e] for p in points], ls, lw=1.3,
                            color=color[width], label=f"{role}, width {width}")  # fmt: skip
                if role in late:
                    values = {e: round(late[role][e], 3) for e in EXPONENTS}
                    records.append({"setting": label, "width": width, "role": role,
                                    "lr": float(run["lr"]), **values})  # fmt: skip
                    shown = " | ".join(f"{values[e]:.3f}" for e in EXPONENTS)
                    lines.append(f"| {label} | {width} | {role} | {shown} |")
        for ax, e in zip(row, EXPONENTS):
            for level in (0.5, 1.0):
                ax.axhline(level, color="0.6", lw=0.8, ls=":")
            ax.set(title=f"{label}: {e}", xlabel="step", ylabel=f"{e} (log_n of the ratio)")
            ax.grid(True, alpha=0.3)
        row[-1].legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    table = [
        "| setting | width | role | alpha | omega | u |",
        "|---|---|---|---|---|---|",
        *lines,
        "(means over the second half of training and over the role's layers; "
        "full alignment = (1, 1/2, 1), none = (1/2, 1/2, 1/2))",
    ]
    return _finish(repro, root, records, [_save(fig, root / f"{repro.name}.png")], table)


# ---------------------------------------------------------------------------------------------
# [K] SP -> muP switches: E, kappa, R_inf and the transfer penalty


def _k_label(key: Record) -> str:
    from hptransfer.param.rules import switch_name

    code = str(key["param.k_switches"])
    return f"{switch_name(code)} ({code})"


def mup_relabelled(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The runs with their base LR in muP's convention: the [K] specs sweep one global base
    LR per width (lr_exponents = global, c_h = 0), and the same model has base LR
    lr * width_mult^c_h under per_layer (c_h = muP's hidden exponent for the optimizer: 1 for
    the Adam family), so muP's own transfer is measured on lr * width_mult^c_h."""
    from hptransfer.param.rules import make_rule
    from hptransfer.store import read_json

    out = df.copy()
    factors = []
    for run_id, opt in zip(out["run_id"], out["optimizer"]):
        cfg = read_json(root / "runs" / str(run_id) / "config.json")
        c_h = float(make_rule("mup", str(opt), "full").roles["hidden"].c)
        factors.append((cfg["model"]["width"] / cfg["param"]["base_width"]) ** c_h)
    out["lr"] = out["lr"] * factors
    return out


def analyse_k_switches(repro: Reproduction, df: pd.DataFrame, root: Path) -> Record:
    """[K]'s metrics per switch combination (E, kappa, R_inf: the same in either LR
    convention) and the loss of reusing the smallest width's LR at the largest, both as swept
    (one global LR, SP's convention) and in muP's convention (see mup_relabelled); the
    extrapolation penalty uses the law fitted on the other widths. Figure: metric bars, then
    the optimal LR and loss against width."""
    import matplotlib.pyplot as plt

    from hptransfer.plots import plot_transfer_metrics

    _, fits, records = transfer_table(df, repro.by, repro.label)
    relabelled = transfer_table(mup_relabelled(df, root), repro.by, repro.label)[2]
    for rec, mu in zip(records, relabelled):
        rec["drift_per_doubling_mup_lr"] = mu["drift_per_doubling"]
        rec["transfer_penalty_pct_mup_lr"] = mu["transfer_penalty_pct"]
    metrics = ("E", "kappa", "R_inf", "extrap_penalty_pct")
    fig = plt.figure(figsize=(14, 6.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.1])
    plot_transfer_metrics(fits, ax=top.subplots(1, len(metrics)), by=["setting"], metrics=metrics)
    _optima_panels(bottom.subplots(1, 2), records)
    bottom.axes[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figures = [_save(fig, root / f"{repro.name}.png"), _sweep_figure(repro, df, root, records)]
    table = transfer_lines(records, "width") + [
        "",
        "| setting | E (ours) | kappa | R_inf (nats) | extrapolation penalty % | drift / doubling,"
        " muP's LR | transfer penalty %, muP's LR |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['setting']} | {_fmt(r['E'], 3)} | {_fmt(r['kappa'])} | {_fmt(r['R_inf'], 3)} | "
            f"{_fmt(r['extrap_penalty_pct'])} | {_fmt(r['drift_per_doubling_mup_lr'])} | "
            f"{_fmt(r['transfer_penalty_pct_mup_lr'])} |"
            for r in records
        ),
    ]
    return _finish(repro, root, records, figures, table)


# ---------------------------------------------------------------------------------------------
# [S] depth


def _depth_label(key: Record) -> str:
    p = float(key["param.depth_exponent"])
    if p == 0:
        return f"{key['optimizer']}, no depth multiplier"
    return f"{key['optimizer']}, branch x (L0/L)^{p:g}"


# ---------------------------------------------------------------------------------------------
# Registry and report


def _optimizer_label(key: Record) -> str:
    return str(key["optimizer"])


REPRODUCTIONS: dict[str, Reproduction] = {
    r.name: r
    for r in (
        Reproduction(
            name="e_exponents",
            paper="E",
            claim="with per-layer LR exponents every parameterization transfers; one global "
            "LR drifts (SP's optimum falls with width)",
            specs=("e_exponents.toml", "e_exponents-global.toml"),
            by=("parameterization", "param.lr_exponents", "param.alignment"),
            analyse=analyse_transfer,
            label=_e_exponents_label,
            style=_e_exponents_style,
        ),
        Reproduction(
            name="e_epsilon",
            paper="E",
            claim="a constant Adam epsilon underflows as gradients shrink with width and breaks "
            "transfer; per-layer epsilon and Adam-atan2 avoid it",
            specs=("e_epsilon.toml", "e_epsilon-atan2.toml"),
            by=("optimizer", "param.eps_mode"),
            analyse=analyse_e_epsilon,
            label=_e_epsilon_label,
        ),
        Reproduction(
            name="e_alignment",
            paper="E",
            claim="measured alignment lies between the full and no-alignment assumptions, "
            "differs per role and changes over training",
            specs=("e_alignment.toml",),
            by=("parameterization", "optimizer"),
            analyse=analyse_alignment,
            label=_alignment_label,
        ),
        Reproduction(
            name="s_optimizers",
            paper="S",
            claim="with each optimizer's spectral muP rule the optimal LR transfers across width "
            "for AdamW, ADOPT, LAMB, Sophia, Shampoo and Muon",
            specs=("s_optimizers.toml", "s_optimizers-sophia.toml", "s_optimizers-shampoo.toml"),
            by=("optimizer",),
            analyse=analyse_transfer,
            label=_optimizer_label,
        ),
        Reproduction(
            name="k_switches",
            paper="K",
            claim="under AdamW the embedding-LR switch alone (SP+Embd) gives most of muP's "
            "benefit: E of SP 0.021, SP+Embd 0.0016, muP 0.00093, muP without it 0.048",
            specs=("k_switches.toml",),
            by=("param.k_switches",),
            analyse=analyse_k_switches,
            label=_k_label,
        ),
        Reproduction(
            name="s_depth",
            paper="S",
            claim="residual-branch multipliers (L0/L)^p let the optimal LR transfer across "
            "depth for AdamW and Muon",
            specs=("s_depth.toml",),
            by=("optimizer", "param.depth_exponent"),
            analyse=analyse_transfer,
            label=_depth_label,
            x="model.depth",
        ),
    )
}


def get(name: str) -> Reproduction:
    if name not in REPRODUCTIONS:
        raise ConfigError(
            f"unknown reproduction {name!r}; choose one of {', '.join(REPRODUCTIONS)}"
        )
    return REPRODUCTIONS[name]


def analyse(repro: Reproduction, df: pd.DataFrame, root: str | Path) -> Record:
    """Figures and numbers of ``repro`` from its results (Agg backend, nothing shown)."""
    import matplotlib

    matplotlib.use("Agg")
    return repro.analyse(repro, df, Path(root))


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}"


def markdown(repro: Reproduction, numbers: Record) -> str:
    """The numbers as Markdown: the claim, the table, the figure paths."""
    lines = [f"\n{repro.name} ([{repro.paper}]): {repro.claim}\n", *numbers["table"], ""]
    lines += [f"figure: {p}" for p in numbers["figures"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# CLI adapter


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``repro NAME [--out DIR] [--smoke] [--workers N] [--recipes DIR]``."""
    p = subparsers.add_parser(
        "repro",
        help="reproduce a paper finding at small scale (sweep + figure + numbers)",
        description="Run (or resume) a reproduction's sweep specs from recipes/repro into one "
        "directory, then write its figures and NAME.json there and print the numbers. "
        "See docs/reproductions.md.",
    )
    p.add_argument("name", nargs="?", help="reproduction name (--list shows them)")
    p.add_argument("--list", action="store_true", help="list the reproductions and exit")
    p.add_argument("--out", type=Path, help="results directory (default hpt-results/repro/NAME)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline only")
    p.add_argument(
        "--analyse-only", action="store_true", help="no runs: analyse what DIR already holds"
    )
    p.add_argument("--workers", type=int, help="concurrent runs (default: the spec's)")
    p.add_argument("--recipes", type=Path, default=RECIPES, help="directory of the specs")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.list:
        for r in REPRODUCTIONS.values():
            print(f"{r.name:<13} [{r.paper}] {r.claim}")
        return 0
    if not args.name:
        raise ConfigError(f"name a reproduction: {', '.join(REPRODUCTIONS)} (--list)")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    run_reproduction(
        args.name, args.out, smoke=args.smoke, workers=args.workers, recipes=args.recipes,
        quiet=args.quiet, analyse_only=args.analyse_only,
    )  # fmt: skip
    return 0
