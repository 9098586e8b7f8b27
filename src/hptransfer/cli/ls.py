"""``hptransfer ls DIR``: a one-screen status of a results directory (no torch)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ls",
        help="one-screen status of a results directory (done / running / diverged / failed)",
        description="Count the runs of a results directory by status, per parameterization, "
        "optimizer and width, with the best loss so far; list failed and running runs.",
    )
    parser.add_argument("dir", help="results directory (a sweep's --out)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hptransfer.sweep.ls import status_text

    print(status_text(args.dir))
    return 0
