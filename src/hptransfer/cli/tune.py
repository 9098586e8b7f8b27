"""``hptransfer tune SPEC``: random search of the per-role LR constants at the base width."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tune",
        help="random search of per-role LR constants (gamma_*) at the base width",
        description="Train the base config of SPEC (a sweep spec or a recipe) at its base width "
        "with random gamma_input/hidden/output (log-uniform in [1e-2, 1e2]) and write the best "
        "into a recipe TOML. Trials are stored (and resumed) like a sweep's runs.",
    )
    parser.add_argument("spec", help="sweep spec or recipe TOML")
    parser.add_argument("--trials", type=int, default=50, help="number of trials (default 50)")
    parser.add_argument("--out", required=True, help="recipe TOML to write")
    parser.add_argument("--dir", help="results directory (default hpt-results/tune-<spec name>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random search")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run)
    return parser


def _load(path: str):
    """A sweep spec ([base] table) or a plain recipe: a SweepSpec or a RunConfig."""
    from hptransfer.config import read_toml
    from hptransfer.sweep.spec import parse_base, parse_spec

    table = read_toml(path)
    if "base" in table:
        return parse_spec({k: v for k, v in table.items() if k != "grid"}, Path(path).parent)
    return parse_base(table, Path(path).parent)


def run(args: argparse.Namespace) -> int:
    from hptransfer.experiments.tune import tune_constants

    directory = args.dir or str(Path("hpt-results") / f"tune-{Path(args.spec).stem}")
    result = tune_constants(
        _load(args.spec), args.trials, directory, recipe_out=args.out, seed=args.seed,
        quiet=args.quiet,
    )  # fmt: skip
    gammas = ", ".join(f"{k.split('.')[-1]}={v:.4g}" for k, v in result["best"].items())
    print(f"{args.out}: {gammas} (loss {result['loss']:.4f}, {result['ok']}/{result['trials']} ok)")
    return 0
