"""``hptransfer train RECIPE``: one run into a run directory (a thin adapter over `train`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hptransfer.config import RunConfig, load_recipe, parse_sets


def add_config_arguments(parser: argparse.ArgumentParser, recipe_required: bool) -> None:
    """RECIPE and --set KEY=VALUE, shared by the commands that build one run config."""
    if recipe_required:
        parser.add_argument("recipe", help="recipe TOML file")
    else:
        parser.add_argument("recipe", nargs="?", help="recipe TOML file (default: built-in)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.width=256 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The validated config of RECIPE (or the default one) with the --set overrides."""
    overrides = parse_sets(args.set or [])
    if args.recipe:
        return load_recipe(args.recipe, overrides)
    return RunConfig().replace(**overrides).validate()


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train one run from a recipe")
    add_config_arguments(parser, recipe_required=True)
    parser.add_argument("--out", help="run directory (default hpt-results/train/RUN_ID)")
    parser.add_argument("--quiet", action="store_true", help="no per-eval progress lines")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = Path(args.out) if args.out else Path("hpt-results") / "train" / cfg.run_id()
    if "RANK" not in os.environ:  # one process holds the whole run: it must fit
        from hptransfer.sweep.preflight import check_memory

        check_memory([cfg])
    from hptransfer.train import train

    def progress(rec: dict) -> None:
        if "eval_loss" in rec and not args.quiet:
            print(
                f"step {rec['step'] + 1:>6}  loss {rec['loss']:.4f}  eval {rec['eval_loss']:.4f}",
                file=sys.stderr,
            )

    summary = train(cfg, out, progress=progress)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 speaks for the job
        return 0
    final = summary["final_eval_loss"]
    print(
        f"{summary['status']}: final eval loss "
        f"{'n/a' if final is None else f'{final:.4f}'} after {summary['steps']} steps "
        f"({summary['wall_time_s']:.1f} s) -> {out}/summary.json"
    )
    return 0
