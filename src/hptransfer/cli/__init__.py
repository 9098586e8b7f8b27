"""hptransfer command line: one module per command, each a thin adapter over the library.

Every command module has ``add_parser(subparsers)`` (registers its arguments; imports nothing
heavy) and ``run(args) -> int`` (imports the library it adapts, calls it, prints). So
`hptransfer --help` imports neither torch nor matplotlib.

The boundary: bad input (:class:`hptransfer.errors.ConfigError`, which argparse's usage errors
become too) prints one line on stderr and exits with code 2, writing nothing. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from typing import NoReturn

from hptransfer.cli import (
    coord_check,
    demo,
    ls,
    predict,
    report,
    repro,
    rules,
    sweep,
    train,
    tune,
)
from hptransfer.errors import ConfigError

COMMANDS = (train, rules, coord_check, demo, sweep, ls, tune, report, predict, repro)
"""In the order `hptransfer --help` lists them."""


class UsageError(ConfigError):
    """A command line argparse refuses (unknown option, missing argument, bad choice)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised as one-line :class:`UsageError` instead of printing
    the usage block and exiting (subcommand parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, f"{message} (see {self.prog} --help)")


def _version() -> str:
    try:
        return metadata.version("hptransfer")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hptransfer",
        description="Width-scaling parameterizations and hyperparameter transfer.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (2 for bad input, printed as one line)."""
    prog = "hptransfer"
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError(prog, "name a command (hptransfer --help lists them)")
        prog = f"hptransfer {args.command}"
        return args.func(args)
    except ConfigError as e:
        where = e.prog if isinstance(e, UsageError) else prog
        print(f"{where}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
