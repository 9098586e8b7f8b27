"""``hptransfer coord-check``: activation RMS per layer across widths, slopes and a figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from hptransfer.cli.train import add_config_arguments, config_from_args
from hptransfer.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("coord-check", help="activation RMS per layer across widths")
    add_config_arguments(parser, recipe_required=False)
    parser.add_argument("--widths", default="64,128,256,512", help="comma-separated widths")
    parser.add_argument("--steps", type=int, default=6, help="training steps recorded")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds averaged")
    parser.add_argument("--out", default="hpt-results/coord-check", help="output directory")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        raise ConfigError(
            f"--widths expects integers separated by commas, got {args.widths!r}"
        ) from None
    for w in widths:
        cfg.replace(**{"model.width": w}).validate()
    for key in ("steps", "seeds"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key} must be >= 1, got {getattr(args, key)}")
    out = Path(args.out)
    from hptransfer.analysis.coord import coord_slopes
    from hptransfer.plots import plot_coord_check
    from hptransfer.probes.coord import coord_check_config

    df = coord_check_config(cfg, widths, steps=args.steps, seeds=range(args.seeds))
    slopes = coord_slopes(df)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "coord.csv", index=False)
    slopes.to_csv(out / "slopes.csv", index=False)
    ax = plot_coord_check(df, step=args.steps - 1)
    ax.figure.get_figure(root=True).savefig(out / "coord.png", dpi=120, bbox_inches="tight")
    last = slopes[slopes.step == args.steps - 1]
    print(
        f"log-log slope of activation RMS vs width at step {args.steps - 1} "
        f"({cfg.param.name} + {cfg.optimizer.name}, widths {widths}):"
    )
    for _, row in last.iterrows():
        print(f"  {row.layer:<28} {row.slope:+.3f}")
    print(f"-> {out}/coord.csv, {out}/coord.png")
    return 0
