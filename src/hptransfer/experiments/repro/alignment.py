"""[E] alignment over training: alpha, omega and u per role, measured on stored runs.

Per run (one LR, one width): the alignment exponents of the hidden and output roles at every
probe step, and their means over the second half of training.
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
    """Per run (one LR, one width): alpha, omega and u of the hidden and output roles over
    training, and their means over the second half; figure: one row per setting, one panel
    per exponent, colour = width, line style = role."""
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
        for _, run in group.iterrows():
            width = int(run["width"])
            curves, late = alignment_curves(root / "runs" / str(run["run_id"]))
            measured.append((width, curves))
            for role in ("hidden", "output"):
                if role in late:
                    values = {e: round(late[role][e], 3) for e in EXPONENTS}
                    records.append({"setting": name, "width": width, "role": role,
                                    "lr": float(run["lr"]), **values})  # fmt: skip
                    shown = " | ".join(f"{values[e]:.3f}" for e in EXPONENTS)
                    lines.append(f"| {name} | {width} | {role} | {shown} |")
        for ax, e in zip(row, EXPONENTS):
            plot_alignment(measured, e, ax=ax, title=f"{name}: {e}")
        row[-1].legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    table = [
        "| setting | width | role | alpha | omega | u |",
        "|---|---|---|---|---|---|",
        *lines,
        "(means over the second half of training and over the role's layers; "
        "full alignment = (1, 1/2, 1), none = (1/2, 1/2, 1/2))",
    ]
    return finish(repro, root, records, [save(fig, root / f"{repro.name}.png")], table)
