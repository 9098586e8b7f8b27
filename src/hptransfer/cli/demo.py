"""``hptransfer demo``: the quickstart sweep, its optima per width and a report."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="quickstart: muP vs SP LR sweep across widths (~2 min on 2 idle cores)",
        description="Run the built-in demo sweep (SP with one global LR vs muP, Adam, widths "
        "32-256) and print the optimal LR per width. Re-running resumes.",
    )
    parser.add_argument("--out", help="results directory (default hpt-results/demo)")
    parser.add_argument("--workers", type=int, help="concurrent runs (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hptransfer.experiments.demo import run_demo

    where = {"out": args.out} if args.out else {}  # else the library's default directory
    run_demo(**where, workers=args.workers, quiet=args.quiet)
    return 0
