"""[K] SP -> muP switches: E, kappa, R_inf and the transfer penalty per switch combination.

The [K] specs sweep one global base LR per width (SP's convention); the penalties are given
both as swept and in muP's convention (see :func:`mup_relabelled`). k_weight_decay uses the
same analysis (its settings differ in weight decay instead of switches).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hptransfer.experiments.repro.reproduction import Record, Reproduction
from hptransfer.experiments.repro.transfer import (
    finish,
    optima_panels,
    save,
    spread,
    sweep_figure,
    transfer_lines,
    transfer_table,
)

if TYPE_CHECKING:
    import pandas as pd

    from hptransfer.analysis.transfer import Transfer
    from hptransfer.experiments.repro.verdict import Finding


def label(key: Record) -> str:
    from hptransfer.param.rules import switch_name

    code = str(key["param.k_switches"])
    return f"{switch_name(code)} ({code})"


def claims(transfer: Transfer, records: list[Record]) -> list[Finding]:
    """[K]: the embedding switch does most of muP's work under AdamW. Adding it to SP lowers
    the loss at the largest width and the law's fit error E; removing it from muP raises both
    (for the pairs of switch sets present in the runs)."""
    from hptransfer.experiments.repro import verdict as v

    by_code = {str(r["param.k_switches"]): r for r in records}
    found = []
    for better, worse in (("1000", "0000"), ("1111", "0111")):  # with and without Embd
        if better not in by_code or worse not in by_code:
            continue
        a, b = by_code[better], by_code[worse]
        found += [v.lower_loss(transfer, a, b, max(a["width"])),
                  v.fit_smaller(transfer, a, b, "E", digits=3)]  # fmt: skip
    return found


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


def analyse(repro: Reproduction, df: pd.DataFrame, root: Path) -> Record:
    """[K]'s metrics per switch combination (E, kappa, R_inf: the same in either LR
    convention) and the loss of reusing the smallest width's LR at the largest, both as swept
    (one global LR, SP's convention) and in muP's convention (see mup_relabelled); the
    extrapolation penalty uses the law fitted on the other widths. Figure: metric bars, then
    the optimal LR and loss against width."""
    import matplotlib.pyplot as plt

    from hptransfer.plots import plot_transfer_metrics

    transfer, records = transfer_table(df, repro.by, repro.label)
    relabelled = transfer_table(mup_relabelled(df, root), repro.by, repro.label)[1]
    for rec, mu in zip(records, relabelled):
        for key in ("drift_per_doubling", "transfer_penalty_pct"):
            for end in ("", "_lo", "_hi"):
                rec[f"{key}_mup_lr{end}"] = mu[f"{key}{end}"]
    metrics = ("E", "kappa", "R_inf", "extrap_penalty_pct")
    fig = plt.figure(figsize=(14, 6.6), layout="constrained")
    (top,), (bottom,) = fig.subfigures(2, 1, squeeze=False, height_ratios=[1.0, 1.1])
    plot_transfer_metrics(
        transfer.fits, ax=top.subplots(1, len(metrics)), by=["setting"], metrics=metrics
    )
    optima_panels(bottom.subplots(1, 2), records)
    bottom.axes[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figures = [save(fig, root / f"{repro.name}.png"), sweep_figure(repro, df, root)]
    table = transfer_lines(records, "width") + [
        "",
        "| setting | E (ours) | kappa | R_inf (nats) | extrapolation penalty % | drift / doubling,"
        " muP's LR | transfer penalty %, muP's LR |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['setting']} | {spread(r, 'E', 3)} | {spread(r, 'kappa')} | "
            f"{spread(r, 'R_inf', 3)} | {spread(r, 'extrap_penalty_pct')} | "
            f"{spread(r, 'drift_per_doubling_mup_lr')} | "
            f"{spread(r, 'transfer_penalty_pct_mup_lr')} |"
            for r in records
        ),
    ]
    return finish(repro, root, records, figures, table, transfer)
