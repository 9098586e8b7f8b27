"""[E] alignment over training: alpha, omega and u per role, measured on stored runs.

Per setting and width (one LR): the alignment exponents of the hidden and output roles at every
probe step, their means over the second half of training, and their change over training (the
last probe minus the first), each as mean [min, max] over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hptransfer.experiments.repro.reproduction import Record, Reproduction, role_table
from hptransfer.experiments.repro.transfer import finish, save

if TYPE_CHECKING:
    import pandas as pd


def label(key: Record) -> str:
    return f"{key['parameterization']} + {key['optimizer']}"


def _spread(values: list[float]) -> dict[str, float]:
    """Mean, min and max over seeds, rounded to 3 digits."""
    return {"mean": round(sum(values) / len(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}  # fmt: skip


def _shown(v: dict[str, float], signed: bool = False) -> str:
    f = "+.3f" if signed else ".3f"
    if v["min"] == v["max"]:
        return f"{v['mean']:{f}}"
    return f"{v['mean']:{f}} [{v['min']:{f}}, {v['max']:{f}}]"


def alignment_curves(run_dir: Path) -> tuple[dict[str, list[Record]], dict[str, Record]]:
    """A run's alignment probes per role: ``{role: [{step, alpha, omega, u}, ...]}`` (means
    over the role's layers at each probe step) and the means over the second half of training
    (``{role: {alpha, omega, u, n_probes, steps}}``), from ``align/<exponent>/<param>`` keys."""
    from hptransfer.analysis.alignment import average_by_role
    from hptransfer.probes.alignment import EXPONENTS
    from hptransfer.store import read_metrics

    cfg, table = role_table(run_dir)
    roles = {e.name: e.role for e in table}
    metrics = read_metrics(run_dir)
    probed = sorted({m["step"] + 1 for m in metrics if any(k.startswith("align/") for k in m)})
    curves: dict[str, list[Record]] = {}
    for t in probed:
        for role, values in average_by_role(metrics, roles, (t, t)).items():
            curves.setdefault(role, []).append({"step": t, **{e: values[e] for e in EXPONENTS}})
    return curves, average_by_role(metrics, roles, (cfg.train.steps // 2 + 1, None))


def analyse(repro: Reproduction, df: pd.DataFrame, root: Path) -> Record:
    """Per setting and width (one LR): alpha, omega and u of the hidden and output roles over
    training, their means over the second half and their change from the first probe to the
    last, as mean [min, max] over seeds; figure
    (first seed): one row per setting, one panel per exponent, colour = width, line style =
    role."""
    import matplotlib.pyplot as plt

    from hptransfer.plots import plot_alignment
    from hptransfer.probes.alignment import EXPONENTS

    runs = df[df["status"] == "ok"].sort_values([*repro.by, "width"])
    settings = list(runs.groupby(list(repro.by), sort=True))
    fig, grid = plt.subplots(len(settings), 3, figsize=(13, 3.3 * len(settings)),
                             squeeze=False, layout="constrained")  # fmt: skip
    records, lines = [], []
    for row, (key, group) in zip(grid, settings):
        name = repro.label(dict(zip(repro.by, key if isinstance(key, tuple) else (key,))))
        measured = []
        for width, runs_at in group.groupby("width", sort=True):
            late_by_seed, curves_by_seed = [], []
            for i, (_, run) in enumerate(runs_at.iterrows()):
                curves, late = alignment_curves(root / "runs" / str(run["run_id"]))
                if i == 0:
                    measured.append((int(width), curves))
                late_by_seed.append(late)
                curves_by_seed.append(curves)
            for role in ("hidden", "output"):
                seeds = [late[role] for late in late_by_seed if role in late]
                if not seeds:
                    continue
                values = {e: _spread([s[e] for s in seeds]) for e in EXPONENTS}
                change = {e: _spread([c[role][-1][e] - c[role][0][e] for c in curves_by_seed
                                      if role in c]) for e in EXPONENTS}  # fmt: skip
                records.append({"setting": name, "width": int(width), "role": role,
                                "lr": float(runs_at["lr"].iloc[0]), "n_seeds": len(seeds),
                                **values, "change": change})  # fmt: skip
                cells = [_shown(values[e]) for e in EXPONENTS]
                cells += [_shown(change[e], signed=True) for e in EXPONENTS]
                shown = " | ".join(cells)
                lines.append(f"| {name} | {int(width)} | {role} | {shown} |")
        for ax, e in zip(row, EXPONENTS):
            plot_alignment(measured, e, ax=ax, title=f"{name}: {e}")
        row[-1].legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    table = [
        "| setting | width | role | alpha | omega | u | alpha change | omega change | u change |",
        "|---|---|---|---|---|---|---|---|---|",
        *lines,
        "(alpha, omega, u: means over the second half of training and over the role's layers; "
        "change: last probe minus first; [min, max] over seeds; full alignment = (1, 1/2, 1), "
        "none = (1/2, 1/2, 1/2))",
    ]
    return finish(repro, root, records, [save(fig, root / f"{repro.name}.png")], table)
