"""``hptransfer predict DIR --width N``: the base LR to use at width N, per setting of a sweep.

Prints, per setting (parameterization / optimizer / other swept keys), the recommended base LR
at the target width with its bootstrap interval and the rule it used (keep the measured
optimum, or extrapolate the fitted law; see `hptransfer.analysis.predict`), the expected loss
where a loss law can be fitted, warnings (far extrapolation, poor fit), and the setting the
data recommend. ``--export plan.json`` writes the per-parameter plan of the target model
(`hptransfer.plan`), ``--export recipe.toml`` a ready ``hptransfer train`` recipe. Bad input
prints one line and exits 2 with nothing written.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hptransfer.config import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from hptransfer.config import RunConfig

GAMMAS = ("gamma_input", "gamma_hidden", "gamma_output", "gamma_vector")
EXPORTS = (".json", ".toml")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``predict DIR --width N ...``; imports nothing heavy."""
    p = subparsers.add_parser(
        "predict",
        help="recommended base LR at a target width, with an interval; export a plan or recipe",
        description="From a sweep directory, predict the base LR at width N for each setting "
        "(keep the measured optimum when it does not move with width, else extrapolate "
        "eta* = C N^-beta), with a bootstrap interval, and say which setting the data recommend.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="sweep results directory (holds runs/)")
    p.add_argument("--width", type=int, required=True, help="target width N")
    p.add_argument("--depth", type=int, help="target depth (default: the sweep's)")
    p.add_argument(
        "--setting",
        metavar="NAME",
        help="only settings whose values include these, e.g. mup or mup/adam",
    )
    p.add_argument("--format", default="table", choices=("table", "json"))
    p.add_argument(
        "--export",
        action="append",
        default=[],
        metavar="PATH",
        help="write PATH.json (per-parameter plan) or PATH.toml (train recipe) for the "
        "recommended setting, or the one --setting selects (repeatable)",
    )
    p.add_argument("--level", type=float, default=0.9, help="interval coverage (default 0.9)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.set_defaults(func=run)
    return p


def _select(pred: pd.DataFrame, name: str | None) -> pd.DataFrame:
    """The rows whose by-values include every '/'-separated part of ``name``."""
    if not name:
        return pred
    parts = [p.strip() for p in name.split("/") if p.strip()]
    hit = pred["label"].map(lambda lab: all(p in lab.split(" / ") for p in parts))
    if not hit.any():
        raise ConfigError(
            f"--setting {name}: no such setting; the sweep has {', '.join(pred['label'])}"
        )
    return pred[hit.to_numpy()]


def _template(root: Path, df: pd.DataFrame, by: list[str], row: dict) -> tuple[RunConfig, str]:
    """Config of the setting's run at its largest width with the LR nearest the prediction."""
    from hptransfer.config import from_dict
    from hptransfer.store import read_json, run_dir

    mine = df[(df["status"] == "ok") & (df["width"] == row["width_max"])]
    for col in by:
        mine = mine[(mine[col] == row[col]) | (mine[col].isna() & _isna(row[col]))]
    distance = (mine["lr"].astype(float).map(math.log) - math.log(row["lr"])).abs()
    run_id = str(mine.loc[distance.idxmin(), "run_id"])
    return from_dict(read_json(run_dir(root, run_id) / "config.json")), run_id


def _isnum(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _isna(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _width_keys(df: pd.DataFrame, by: list[str], row: dict) -> list[str]:
    """Swept keys that change with width within the setting (e.g. train.steps from tokens per
    parameter; see report.setting_columns): a recipe at the target width keeps one value."""
    from hptransfer.store import COLUMNS

    mine = df
    for col in by:
        mine = mine[(mine[col] == row[col]) | (mine[col].isna() & _isna(row[col]))]
    keys = [c for c in df.columns if c not in (*COLUMNS, *by, "model.width")]
    per_width = mine.groupby("width")
    return [
        c
        for c in keys
        if (per_width[c].nunique(dropna=False) == 1).all() and mine[c].nunique(dropna=False) > 1
    ]


def _target(cfg: RunConfig, args: argparse.Namespace, lr: float) -> RunConfig:
    dotted: dict[str, Any] = {"model.width": args.width, "optimizer.lr": lr}
    if args.depth is not None:
        dotted["model.depth"] = args.depth
    return cfg.replace(**dotted).validate()


def run(args: argparse.Namespace) -> int:
    from hptransfer.analysis.predict import predict_lr, recommend
    from hptransfer.analysis.transfer import finished_runs
    from hptransfer.report import load_sweep, setting_columns

    bad = [p for p in args.export if Path(p).suffix not in EXPORTS]
    if bad:
        raise ConfigError(f"--export {bad[0]}: write a .json (plan) or .toml (recipe) path")
    df, _, _ = load_sweep(args.dir)
    by = setting_columns(df)
    used = finished_runs(df)
    pred = predict_lr(used, args.width, by, n_boot=args.n_boot, level=args.level, seed=args.seed)
    pred = _select(pred, args.setting)
    best, why = recommend(pred)
    rows = pred.to_dict("records")
    templates = {}
    for i, row in zip(pred.index, rows):
        if math.isfinite(row["lr"]):
            templates[i] = _template(args.dir, used, by, row)
            cfg = templates[i][0]
            row["gammas"] = {g: getattr(cfg.param, g) for g in GAMMAS}
            row["depth"] = cfg.model.depth
            row["warnings"] += tuple(
                f"{k} changes with width in the sweep: the plan and recipe keep the value at "
                f"width {row['width_max']:g}"
                for k in _width_keys(used, by, row)
            )
    notes = []
    depths = {row["depth"] for row in rows if "depth" in row}
    if args.depth is not None and depths - {args.depth}:
        notes.append(
            f"depth {args.depth} differs from the swept depth {sorted(depths)}: the LR is "
            "predicted across width only"
        )
    label = None if best is None else rows[list(pred.index).index(best)]["label"]
    writes = []
    if args.export:
        if best is None:
            raise ConfigError("nothing to export: no setting has a prediction")
        row = rows[list(pred.index).index(best)]
        writes = _exports(args, row, templates[best], args.level, notes)
    if args.format == "json":
        print(json.dumps(_json(args, rows, by, label, why, notes), indent=1, default=_plain))
    else:
        print(_table(args, rows, label, why, notes))
    for path, write in writes:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        print(f"wrote {path}")
    return 0


def _exports(
    args: argparse.Namespace, row: dict, template: tuple[RunConfig, str], level: float, notes
) -> list:
    """(path, writer) pairs, every file prepared before any is written."""
    from hptransfer.store import write_text

    cfg = _target(template[0], args, row["lr"])
    provenance = {
        "sweep_dir": str(args.dir),
        "setting": row["label"],
        "template_run": template[1],
        "rule": row["rule"],
        "base_lr": row["lr"],
        "interval": [row["lr_lo"], row["lr_hi"]],
        "level": level,
        "keep_share": row["keep_share"],
        "beta": row["beta"],
        "E": row["E"],
        "swept_widths": [row["width_min"], row["width_max"]],
        "expected_loss": row["loss"],
        "gammas": row["gammas"],
        "warnings": list(row["warnings"]) + notes,
        "sources": {
            "base_lr": "hptransfer predict (keep: mean ln optimum over widths; extrapolate: "
            "C N^-beta), interval from the residual bootstrap",
            "role, init_std, multiplier, lr_factor, eps, weight_decay": "the rule of the "
            "template run's config at the target width (hptransfer rules --model)",
            "lr": "base_lr x lr_factor (x the depth factor for hidden parameters)",
        },
    }
    out: list[tuple[Path, Callable[[Path], None]]] = []
    for path in map(Path, args.export):
        if path.suffix == ".json":
            from hptransfer.plan import make_plan

            plan = make_plan(cfg, provenance)
            out.append((path, plan.save))
        else:
            from hptransfer.experiments.tune import recipe_text

            header = (
                f"Predicted by `hptransfer predict {args.dir} --width {args.width}`: "
                f"{row['label']}, base LR {row['lr']:.4g} ({row['rule']}, "
                f"{level:.0%} interval {row['lr_lo']:.4g}..{row['lr_hi']:.4g})."
            )
            text = recipe_text(cfg, "\n".join([header, *row["warnings"], *notes]))
            out.append((path, functools.partial(write_text, text=text)))
    return out


def _plain(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else str(x)


def _json(args, rows: list[dict], by: list[str], label, why: str, notes: list[str]) -> dict:
    settings = [
        {k: None if _isnum(v) and not math.isfinite(v) else v for k, v in r.items()}
        | {"warnings": list(r["warnings"])}
        for r in rows
    ]
    return {
        "sweep_dir": str(args.dir),
        "width": args.width,
        "depth": args.depth,
        "level": args.level,
        "by": by,
        "settings": settings,
        "recommended": {"setting": label, "reason": why},
        "notes": notes,
    }


def _table(args, rows: list[dict], label, why: str, notes: list[str]) -> str:
    pct = f"{args.level:.0%}"
    head = ("setting", "rule", "base LR", f"{pct} interval", "kept", "drift/2x", "E", "loss")
    lines = [head]
    for r in rows:
        if not math.isfinite(r["lr"]):
            lines.append((r["label"], "-", "-", "-", "-", "-", "-", "-"))
            continue
        lines.append(
            (
                r["label"],
                r["rule"],
                f"{r['lr']:.4g}",
                f"{r['lr_lo']:.4g} .. {r['lr_hi']:.4g}",
                f"{r['keep_share']:.0%}",
                f"{round(r['drift_per_doubling'], 3) + 0.0:+.3f}",
                f"{r['E']:.3f}" if r["n_widths"] > 2 else "-",
                f"{r['loss']:.4f}" if math.isfinite(r["loss"]) else "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        f"base LR at width {args.width}" + (f", depth {args.depth}" if args.depth else "")
        + f" from {args.dir}"
        + f" (swept widths {min(r['width_min'] for r in rows):g}"
        + f"..{max(r['width_max'] for r in rows):g})"
    ]  # fmt: skip
    text += ["  " + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    if label is not None:
        text.append(f"recommended: {label}: {why}")
    for r in rows:
        tuned = {k: v for k, v in r.get("gammas", {}).items() if v != 1.0}
        if tuned:
            text.append(
                f"{r['label']}: per-role LR constants "
                + ", ".join(f"{k.removeprefix('gamma_')} {v:.4g}" for k, v in tuned.items())
                + " (from the runs' config; carried into the plan and recipe)"
            )
        text += [f"warning: {r['label']}: {w}" for w in r["warnings"]]
    text += [f"note: {n}" for n in notes]
    return "\n".join(text)
