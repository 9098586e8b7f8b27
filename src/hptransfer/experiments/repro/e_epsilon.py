"""[E] epsilon: a constant Adam epsilon underflows as gradients shrink with width.

Transfer numbers per setting (constant or per-layer epsilon, Adam-atan2) plus the fraction of
each role's second-moment coordinates with sqrt(v_hat) < eps, at each width's optimal grid LR.

Where eps = 1e-8 would dominate: a gradient-RMS probe (experiments.repro.gradients) trains the
runs' model with Adam and eps = 1e-8 (so that eps steers nothing) at base LR 2^-5 (the
window's LR nearest it), at every width and seed of the runs, and stores the
records in ``DIR/gradient_rms.csv`` (the reproduction's measure step, after the sweeps, once;
``--analyse-only`` only reads them); each
role's RMS is fitted against width and extrapolated to the width where it reaches 1e-8, 1e-6
and the runs' own eps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hptransfer.atomic import write_text
from hptransfer.experiments.repro.gradients import gradient_figure, gradient_fits, gradient_lines
from hptransfer.experiments.repro.reproduction import (
    Record,
    Reproduction,
    role_table,
    run_config,
)
from hptransfer.experiments.repro.transfer import (
    finish,
    optima_panels,
    save,
    sweep_figure,
    transfer_lines,
    transfer_table,
)

if TYPE_CHECKING:
    import pandas as pd

    from hptransfer.analysis.transfer import Transfer
    from hptransfer.experiments.repro.verdict import Finding


def label(key: Record) -> str:
    if key["optimizer"] == "adam_atan2":
        return "adam-atan2 (no epsilon)"
    return f"adam, {key['param.eps_mode'].replace('_', '-')} epsilon"


def claims(transfer: Transfer, records: list[Record]) -> list[Finding]:
    """[E]: a constant epsilon breaks transfer once it underflows; per-layer epsilon and
    Adam-atan2 transfer, move less than the constant epsilon (the control) and end below it at
    the largest width. (:func:`analyse` adds the probe's: the hidden and output gradient RMS
    fall with width.)"""
    from hptransfer.experiments.repro import verdict as v

    const = v.find(records, optimizer="adam", param__eps_mode="constant")
    layer = v.find(records, optimizer="adam", param__eps_mode="per_layer")
    atan2 = v.find(records, optimizer="adam_atan2")
    top = max(const["width"])
    found = [v.drifts(const)]
    for rec in (layer, atan2):
        found += [v.transfers(rec), v.less_drift(transfer, rec, const),
                  v.lower_loss(transfer, rec, const, top)]  # fmt: skip
    return found


def underflow_by_role(run_dir: Path) -> dict[str, float]:
    """Fraction of coordinates with sqrt(v_hat) < eps per role, at the run's last logged step.

    metrics.jsonl holds ``underflow/<param name>`` per parameter at eval steps; a role's
    fraction is the mean over its parameters weighted by their sizes (so it is the fraction of
    the role's coordinates). Empty when the optimizer logs none (Adam-atan2 has no epsilon).
    """
    from hptransfer.store import read_metrics

    last: dict[str, float] = {}
    for record in read_metrics(run_dir):
        found = {k[len("underflow/") :]: v for k, v in record.items()
                 if k.startswith("underflow/")}  # fmt: skip
        if found:
            last = found
    if not last:
        return {}
    _, roles = role_table(run_dir)
    total: dict[str, float] = {}
    size: dict[str, float] = {}
    for name, fraction in last.items():
        entry = roles[name]
        n = float(math.prod(entry.shape))
        total[entry.role] = total.get(entry.role, 0.0) + fraction * n
        size[entry.role] = size.get(entry.role, 0.0) + n
    return {role: total[role] / size[role] for role in sorted(total)}


PROBE_FILE = "gradient_rms.csv"
PROBE_EPS = 1e-8
"""The probe's Adam eps (the default): far below every measured RMS, so it steers nothing."""
PROBE_LR = 2.0**-5
"""The probe's base LR (the per-layer-epsilon window's LR nearest it): inside every width's
window, a little below the optima, and fixed so the probe does not depend on the losses."""
PROBE_EVERY = 10
"""The probe records every this many steps."""
CROSSINGS = (1e-8, 1e-6)
"""eps values whose crossing width is reported, besides the runs' own eps."""


def measure_probe(repro: Reproduction, df: pd.DataFrame, root: Path) -> None:
    """The reproduction's measure step: the gradient-RMS probe into ``DIR/gradient_rms.csv``
    (kept when present, so a resume does not measure again). The config of the per-layer-
    epsilon run of seed 0 at the smallest width and the window's LR nearest PROBE_LR, with eps
    = PROBE_EPS, trained at every width and seed of ``df``. The LR is fixed, not the fitted
    optimum, so the probe does not depend on the sweep's losses."""
    from hptransfer.analysis.transfer import setting_rows
    from hptransfer.experiments.repro.gradients import gradient_rms

    path = root / PROBE_FILE
    if path.is_file():
        return
    mine = setting_rows(df, {"optimizer": "adam", "param.eps_mode": "per_layer"})
    mine = mine[mine["width"] == mine["width"].min()]
    lr = min(mine["lr"].unique(), key=lambda x: abs(math.log2(x / PROBE_LR)))
    run = mine[(mine["lr"] == lr) & (mine["seed"] == mine["seed"].min())]
    cfg = run_config(root / "runs" / str(run["run_id"].iloc[0]))
    cfg = cfg.replace(**{"optimizer.eps": PROBE_EPS, "param.eps_mode": "constant"})
    widths = sorted(int(w) for w in df["width"].unique())
    seeds = sorted(int(s) for s in df["seed"].unique())
    # atomic: a probe killed mid-write leaves no partial file to be kept as measured
    write_text(path, gradient_rms(cfg, widths, seeds, every=PROBE_EVERY).to_csv(index=False))


def _runs_at(df: pd.DataFrame, by: Sequence[str], rec: Record, width: int, lr: float
             ) -> list[str]:  # fmt: skip
    """run_ids of the finished runs (one per seed) of setting ``rec`` at ``width`` and grid LR
    ``lr``."""
    import numpy as np

    from hptransfer.analysis.transfer import setting_rows

    runs = df[(df["status"] == "ok") & (df["width"] == width)]
    runs = setting_rows(runs[np.isclose(runs["lr"], lr, rtol=1e-9)], {c: rec[c] for c in by})
    return [str(r) for r in runs.sort_values("seed")["run_id"]]


def _fraction(rec: Record, role: str, i: int) -> str:
    """The underflow fraction of ``role`` at the i-th width, ``0.50 [0.40, 0.60]``."""
    mean, lo, hi = (rec[k][role][i] for k in ("underflow", "underflow_lo", "underflow_hi"))
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" if lo == hi else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def analyse(repro: Reproduction, df: pd.DataFrame, root: Path) -> Record:
    """Transfer numbers per setting, the underflow fraction per role at each width's optimal
    grid LR (mean [min, max] over the seeds' runs there) and the gradient-RMS probe's fits;
    figures: underflow, optimal LR and loss against width; the sweeps; gradient RMS."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from hptransfer.experiments.repro import verdict as v
    from hptransfer.plots import plot_underflow

    transfer, records = transfer_table(df, repro.by, repro.label)
    lines = []
    for rec in records:
        mine = transfer.optima_of(rec)
        per_role: dict[str, list[list[float]]] = {}
        for i, width in enumerate(rec["width"]):
            lr = float(mine.loc[mine["width"] == width, "lr_grid"].iloc[0])
            for run_id in _runs_at(df, repro.by, rec, width, lr):
                for role, value in underflow_by_role(root / "runs" / run_id).items():
                    per_role.setdefault(role, [[] for _ in rec["width"]])[i].append(value)
        for key, stat in (("underflow", np.mean), ("underflow_lo", min), ("underflow_hi", max)):
            rec[key] = {role: [round(float(stat(v)), 4) if v else None for v in values]
                        for role, values in per_role.items()}  # fmt: skip
        for role in ("hidden", "output"):
            if role in per_role:
                shown = ", ".join(_fraction(rec, role, i) for i in range(len(rec["width"])))
                lines.append(f"| {rec['setting']} | {role} | {shown} |")

    fig, axes = plt.subplots(1, 3, figsize=(14.5, 3.8), layout="constrained")
    plot_underflow(records, ax=axes[0])
    optima_panels(axes[1:], records)
    axes[2].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figures = [save(fig, root / f"{repro.name}.png"), sweep_figure(repro, df, root)]
    table = transfer_lines(records, "width") + [
        "",
        "| setting | role | underflow fraction per width (at the optimal grid LR, end of "
        "training; mean [min, max] over seeds) |",
        "|---|---|---|",
        *lines,
        "",
    ]
    if not (root / PROBE_FILE).is_file():  # --analyse-only of a directory never measured
        table.append(f"(no {PROBE_FILE} in {root}: the gradient-RMS probe runs with the sweeps, "
                     "`hptransfer repro e_epsilon --out DIR` without --analyse-only)")  # fmt: skip
        return finish(repro, root, records, figures, table, transfer, {"gradient_rms": []}, [])
    grads = pd.read_csv(root / PROBE_FILE)
    adam = df[df["optimizer"] == "adam"]
    run_eps = run_config(root / "runs" / str(adam["run_id"].iloc[0])).optimizer.eps
    eps_values = [*([run_eps] if run_eps is not None else []), *CROSSINGS]  # the spec sets it
    fits = gradient_fits(grads, eps_values)
    figures.append(gradient_figure(grads, fits, eps_values, root / f"{repro.name}-gradients.png"))
    table += gradient_lines(fits, eps_values, PROBE_EPS)
    shrink = [v.negative(f"{f['role']} gradient RMS falls with width (log-log slope)",
                         f["slope"], f["slope_lo"], f["slope_hi"])
              for f in fits if f["role"] in ("hidden", "output")]  # fmt: skip
    return finish(repro, root, records, figures, table, transfer, {"gradient_rms": fits}, shrink)
