"""[S] muP LR transfer across optimizers, each rule beside its control (one global LR).

Transfer numbers per optimizer and setting, plus where LAMB's clamp binds. LAMB's step is
``lr * min(||w||, clamp) * u / ||u||`` per tensor (optim/lamb.py): the spectral rule the package
gives LAMB (``spectral:lamb_clamped``) assumes the clamp binds, so that a step has the fixed
norm ``lr * clamp``; below the clamp the step is ``lr * ||w|| * u / ||u||``, proportional to the
weights, and the rule's exponents are not the ones derived for it. Whether it binds depends on
the widths: a tensor's Frobenius norm grows with its size. The reproduction's measure step
trains the LAMB rule run (the window's LR nearest PROBE_LR) at every width and seed of the
runs and stores each tensor's Frobenius norm and clamp at the first step and before the last
update in ``DIR/lamb_norms.csv``; the analysis counts, per role and width, the tensors above
the clamp.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from hptransfer.atomic import write_text
from hptransfer.experiments.repro import verdict as v
from hptransfer.experiments.repro.reproduction import Record, Reproduction, run_config
from hptransfer.experiments.repro.transfer import analyse_transfer

if TYPE_CHECKING:
    import pandas as pd

    from hptransfer.analysis.transfer import Transfer
    from hptransfer.assemble import Setup
    from hptransfer.config import RunConfig
    from hptransfer.experiments.repro.verdict import Finding

PROBE_FILE = "lamb_norms.csv"
PROBE_LR = 2.0**-6
"""The probe's LR (the LAMB window's LR nearest it): where a one-seed pilot put LAMB's optimum
at widths 16 and 128 (2^-6.1 and 2^-6.3), fixed so the probe does not depend on the losses."""
COLUMNS = ["name", "role", "numel", "width", "seed", "step", "norm", "clamp"]


def label(key: Record) -> str:
    if key.get("param.lr_exponents") == "global":
        return f"{key['optimizer']}, one global LR (control)"
    return str(key["optimizer"])


def _rules_and_controls(records: list[Record]) -> list[tuple[Record, Record | None]]:
    """Each rule's setting with its control (the same optimizer with one global LR; None
    without one)."""
    pairs = []
    for rec in records:
        if rec.get("param.lr_exponents") == "global":
            continue
        try:
            control = v.find(records, optimizer=rec["optimizer"], param__lr_exponents="global")
        except KeyError:
            control = None
        pairs.append((rec, control))
    return pairs


def claims(transfer: Transfer, records: list[Record]) -> list[Finding]:
    """[S]: each optimizer's spectral muP rule transfers, and beats its control (the same
    optimizer with one global LR) where the two differ."""
    found = []
    for rec, control in _rules_and_controls(records):
        found.append(v.transfers(rec))
        if control is not None:
            found.append(v.less_drift(transfer, rec, control))
    return found


def _lamb_rule_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The finished runs of LAMB with its width rule (not the one-global-LR control)."""
    return df[(df["optimizer"] == "lamb") & (df["param.lr_exponents"] != "global")
              & (df["status"] == "ok")]  # fmt: skip


def lamb_norms(cfg: RunConfig, widths: list[int], seeds: list[int]) -> pd.DataFrame:
    """Frobenius norm and LAMB clamp of every trainable tensor of ``cfg``'s run (a LAMB run) at
    each width and seed, at step 0 (the initial weights) and before the last update
    (experiments.repro.gradients.probe_training). Columns: COLUMNS; clamp is NaN for a tensor
    whose group has no clamp."""
    import pandas as pd

    from hptransfer.experiments.repro.gradients import probe_training
    from hptransfer.optim.lamb import tensor_norms

    last = cfg.train.steps - 1

    def norms(named: list, s: Setup) -> list[dict]:
        sizes = {name: math.prod(p.shape) for name, p in named}
        found = tensor_norms(s.optimizer, {id(p): name for name, p in named})
        return [{"name": name, "role": s.roles[name].role, "numel": sizes[name], "norm": norm,
                 "clamp": math.nan if clamp is None else clamp}
                for name, norm, clamp in found]  # fmt: skip

    records = probe_training(cfg, widths, seeds, lambda step: step in (0, last), norms)
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def measure(repro: Reproduction, df: pd.DataFrame, root: Path) -> None:
    """The reproduction's measure step: the LAMB norm probe into ``DIR/lamb_norms.csv`` (kept
    when present, so a resume does not measure again; nothing without LAMB rule runs)."""
    path = root / PROBE_FILE
    mine = _lamb_rule_runs(df)
    if path.is_file() or mine.empty:
        return
    mine = mine[mine["width"] == mine["width"].min()]
    lr = min(mine["lr"].unique(), key=lambda x: abs(math.log2(x / PROBE_LR)))
    run = mine[(mine["lr"] == lr) & (mine["seed"] == mine["seed"].min())]
    cfg = run_config(root / "runs" / str(run["run_id"].iloc[0]))
    widths = sorted(int(w) for w in df["width"].unique())
    seeds = sorted(int(s) for s in df["seed"].unique())
    # atomic: a probe killed mid-write leaves no partial file to be kept as measured
    write_text(path, lamb_norms(cfg, widths, seeds).to_csv(index=False))


def clamp_counts(norms: pd.DataFrame) -> list[Record]:
    """Per width, step and role: how many of the role's tensors have a Frobenius norm above
    their clamp (min and max over seeds), out of how many, and the role's median norm (over
    its tensors and seeds)."""
    out = []
    for (width, step, role), rows in norms.groupby(["width", "step", "role"], sort=True):
        above = (rows["norm"] > rows["clamp"]).groupby(rows["seed"]).sum()
        out.append({"width": int(width), "step": int(step), "role": str(role),
                    "tensors": int(len(rows) // rows["seed"].nunique()),
                    "above_lo": int(above.min()), "above_hi": int(above.max()),
                    "median_norm": round(float(rows["norm"].median()), 2)})  # fmt: skip
    return out


def clamp_lines(counts: list[Record], clamp: float) -> list[str]:
    """The counts as a Markdown table: a row per width and step, a column per role."""
    roles = sorted({c["role"] for c in counts})
    steps = sorted({c["step"] for c in counts})
    lines = [f"| width | LAMB rule, step | {' | '.join(roles)} |",
             "|---|---|" + "---|" * len(roles)]  # fmt: skip
    cell = {(c["width"], c["step"], c["role"]): c for c in counts}
    for width in sorted({c["width"] for c in counts}):
        for step in steps:
            cells = []
            for role in roles:
                c = cell.get((width, step, role))
                if c is None:
                    cells.append("")
                    continue
                lo, hi = c["above_lo"], c["above_hi"]
                n = f"{lo}" if lo == hi else f"{lo}-{hi}"
                cells.append(f"{n}/{c['tensors']} ({c['median_norm']:g})")
            when = "init" if step == 0 else f"{step}"
            lines.append(f"| {width} | {when} | {' | '.join(cells)} |")
    lines.append(f"(tensors with Frobenius norm above the clamp {clamp:g}, min-max over seeds, "
                 "of the role's tensors; in brackets the role's median norm; step: init, or "
                 "before the last update)")  # fmt: skip
    return lines


def loss_gaps(transfer: Transfer, records: list[Record]) -> tuple[list[str], list[Record]]:
    """Per optimizer with a control: the loss at the optimum of the rule minus the control's
    at the largest width (paired by seed; ``at_edge`` where either optimum there, seed-mean or
    a seed's, is unbracketed), as table lines and records."""
    gaps: list[Record] = []
    for rec, control in _rules_and_controls(records):
        if control is None:
            continue
        top = max(rec["width"])
        point, lo, hi = transfer.loss_gap(rec, control, top)
        edge = any(top in r["mean_edges"] or any(w == top for w, _ in r["seed_edges"])
                   for r in (rec, control))  # fmt: skip
        gaps.append({"optimizer": rec["optimizer"], "width": top, "gap": point, "gap_lo": lo,
                     "gap_hi": hi, "at_edge": edge})  # fmt: skip
    if not gaps:
        return [], gaps
    lines = ["| optimizer | loss gap at the optimum, rule - control (nats) | width |",
             "|---|---|---|"]  # fmt: skip
    lines += [f"| {g['optimizer']} | {v.interval(g['gap'], g['gap_lo'], g['gap_hi'], 3)}"
              f"{'*' if g['at_edge'] else ''} | {g['width']} |" for g in gaps]  # fmt: skip
    if any(g["at_edge"] for g in gaps):
        lines.append("(* = an optimum there, seed-mean or a seed's, at the edge of the LR window: "
                     "its loss bounds the true one from above)")  # fmt: skip
    return ["", *lines], gaps


def style(rec: Record) -> Record:
    """One colour per optimizer; the control dashed with circles, the rule solid with squares."""
    order = ("adamw", "adopt", "lamb", "muon", "shampoo", "sophia")
    name = str(rec["optimizer"])
    color = f"C{order.index(name)}" if name in order else "k"
    if rec.get("param.lr_exponents") == "global":
        return {"color": color, "ls": "--", "marker": "o", "ms": 4, "alpha": 0.8}
    return {"color": color, "ls": "-", "marker": "s", "ms": 4}


def analyse(repro: Reproduction, df: pd.DataFrame, root: Path) -> Record:
    """The transfer analysis (analyse_transfer) with each rule's loss gap to its control and,
    where the runs hold LAMB with its rule, the clamp table of the norm probe."""
    import pandas as pd

    has_lamb = not _lamb_rule_runs(df).empty
    probed = (root / PROBE_FILE).is_file()

    def more(transfer: Transfer, records: list[Record]) -> tuple[list[str], Record]:
        lines, gaps = loss_gaps(transfer, records)
        extra: Record = {"loss_gaps": gaps}
        if not has_lamb:
            return lines, extra
        if not probed:  # --analyse-only of a directory never measured
            lines += [
                "",
                f"(no {PROBE_FILE} in {root}: the LAMB norm probe runs with the "
                "sweeps, `hptransfer repro s_optimizers --out DIR` without --analyse-only)",
            ]
            return lines, {**extra, "lamb_clamp": []}
        norms = pd.read_csv(root / PROBE_FILE)
        counts = clamp_counts(norms)
        clamp = float(norms["clamp"].dropna().iloc[0]) if norms["clamp"].notna().any() else math.nan
        return [*lines, "", *clamp_lines(counts, clamp)], {**extra, "lamb_clamp": counts}

    return analyse_transfer(repro, df, root, more)
