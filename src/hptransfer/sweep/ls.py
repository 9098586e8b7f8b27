"""``hptransfer ls DIR``: a one-screen status of a results directory.

One line of totals, then one row per (parameterization, optimizer, width) with the count of
runs per status and the best final eval loss so far (and its LR), then the runs that failed
(last line of their error) and the ones running now. Reads only the store (no torch).
"""

from __future__ import annotations

import math
from pathlib import Path

STATUS_ORDER = ("ok", "diverged", "stopped", "failed", "running", "pending")
MAX_ROWS = 24
MAX_LISTED = 5


def status_text(root: str | Path) -> str:
    """The status screen of ``root`` as text; ConfigError when it holds no runs."""
    import pandas as pd

    from hptransfer.config import ConfigError
    from hptransfer.store import load_runs, read_json, run_dir

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such results directory")
    df = load_runs(root, errors="ignore")
    if df.empty:
        raise ConfigError(f"{root}: no runs here (expected {root}/runs/<run_id>/ or sweep.json)")
    counts = df["status"].value_counts()
    total = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATUS_ORDER)
    lines = [f"{root}: {len(df)} runs: {total}", ""]

    keys = ["parameterization", "optimizer", "width"]
    table = pd.crosstab([df[k] for k in keys], df["status"])
    table = table.reindex(columns=list(STATUS_ORDER), fill_value=0)
    ok = df[(df["status"] == "ok") & df["final_eval_loss"].notna()]
    best = ok.loc[ok.groupby(keys)["final_eval_loss"].idxmin()].set_index(keys)
    header = f"{'param':<8} {'optimizer':<11} {'width':>6} " + " ".join(
        f"{s:>8}" for s in STATUS_ORDER
    )
    lines.append(header + f" {'best loss':>10} {'at lr':>10}")
    for i, (index, row) in enumerate(table.iterrows()):
        if i == MAX_ROWS:
            lines.append(f"... {len(table) - MAX_ROWS} more rows")
            break
        param, opt, width = index
        cells = " ".join(f"{int(row[s]):>8}" for s in STATUS_ORDER)
        if index in best.index:
            b = best.loc[index]
            tail = f" {b['final_eval_loss']:>10.4f} {'2^' + format(math.log2(b['lr']), '.2f'):>10}"
        else:
            tail = f" {'-':>10} {'-':>10}"
        lines.append(f"{param!s:<8} {opt!s:<11} {width!s:>6} {cells}{tail}")

    for status in ("failed", "running"):
        runs = df[df["status"] == status]
        if runs.empty:
            continue
        lines += ["", f"{status}:"]
        for r in runs.head(MAX_LISTED).itertuples():
            what = f"{r.parameterization} {r.optimizer} width {r.width} lr {r.lr:.4g}"
            if status == "failed":
                try:
                    error = str(read_json(run_dir(root, r.run_id) / "summary.json")["error"])
                    what += ": " + error.strip().splitlines()[-1][:100]
                except (OSError, ValueError, KeyError, IndexError):
                    pass
            lines.append(f"  {r.run_id}  {what}")
        if len(runs) > MAX_LISTED:
            lines.append(f"  ... {len(runs) - MAX_LISTED} more")
    return "\n".join(lines)
