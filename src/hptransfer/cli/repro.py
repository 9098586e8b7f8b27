"""``hptransfer repro NAME``: reproduce a paper finding at small scale (sweeps, figures,
numbers; see docs/reproductions.md)."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from hptransfer.config import Device
from hptransfer.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``repro NAME [--out DIR] [--smoke] [--device cpu|cuda] [--workers N]
    [--recipes DIR]``."""
    p = subparsers.add_parser(
        "repro",
        help="reproduce a paper finding at small scale (sweep + figure + numbers)",
        description="Run (or resume) a reproduction's sweep specs from recipes/repro into one "
        "directory, then write its figures and NAME.json there and print the numbers. "
        "See docs/reproductions.md.",
    )
    p.add_argument("name", nargs="?", help="reproduction name (--list shows them)")
    p.add_argument("--list", action="store_true", help="list the reproductions and exit")
    p.add_argument("--out", type=Path, help="results directory (default hpt-results/repro/NAME)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline only")
    p.add_argument(
        "--analyse-only", action="store_true", help="no runs: analyse what DIR already holds"
    )
    p.add_argument("--workers", type=int, help="concurrent runs (default: the spec's)")
    p.add_argument(
        "--device", choices=typing.get_args(Device), default="cpu",
        help="cuda: each spec's [gpu] version (widths to 2048, adaptive LR windows)",
    )  # fmt: skip
    p.add_argument(
        "--recipes", type=Path, help="directory of the specs (default: the packaged ones)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from hptransfer.experiments.repro import REPRODUCTIONS, run_reproduction

    if args.list:
        for r in REPRODUCTIONS.values():
            print(f"{r.name:<13} [{r.paper}] {r.claim}")
        return 0
    if not args.name:
        raise ConfigError(f"name a reproduction: {', '.join(REPRODUCTIONS)} (--list)")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    where = {"recipes": args.recipes} if args.recipes else {}  # else the library's default
    run_reproduction(
        args.name, args.out, smoke=args.smoke, workers=args.workers, quiet=args.quiet,
        analyse_only=args.analyse_only, device=args.device, **where,
    )  # fmt: skip
    return 0
