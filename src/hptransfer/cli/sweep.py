"""``hptransfer sweep SPEC``: a thin adapter over :func:`run_sweep` (no torch at parse time)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hptransfer.config import EXECUTORS

DEFAULT_ROOT = Path("hpt-results")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sweep",
        help="run a sweep spec (grid, adaptive LR search) into a results directory",
        description="Expand a sweep spec (TOML: [base], [grid], [sweep]) and run every run "
        "into DIR/runs/<run_id>/. Re-running resumes: finished runs are skipped.",
    )
    parser.add_argument("spec", help="sweep spec TOML file")
    parser.add_argument("--out", help="results directory (default: hpt-results/<spec name>)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs as JSON lines, then (on stderr) their number, steps, tokens and "
        "an estimated time from a few timed steps of each model on this machine",
    )
    parser.add_argument("--executor", choices=EXECUTORS, help="overrides sweep.executor")
    parser.add_argument("--workers", type=int, help="concurrent runs (overrides sweep.workers)")
    parser.add_argument("--address", help="Ray cluster address, e.g. auto or head:6379")
    parser.add_argument(
        "--devices", help="place runs on these devices, e.g. cuda:0,cuda:1 (sweep.devices)"
    )
    parser.add_argument(
        "--runs-per-device", type=int, help="runs at once per device (sweep.runs_per_device)"
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="run the runs recorded as failed once more"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hptransfer.sweep.runner import run_sweep
    from hptransfer.sweep.spec import load_spec

    settings = {
        key: getattr(args, key)
        for key in ("executor", "workers", "address", "devices", "runs_per_device")
        if getattr(args, key) is not None
    }
    spec = load_spec(args.spec, settings)
    if args.dry_run:
        from hptransfer.sweep.cost import estimate, measure
        from hptransfer.sweep.spec import parse_step

        runs = spec.expand()
        for r in runs:
            print(json.dumps({"run_id": r.run_id, **r.values}))
        sys.stdout.flush()
        s = spec.settings
        threads = s.threads_per_run
        cost = estimate(
            runs, lambda cfgs: measure(cfgs, threads), s.concurrent_runs, threads,
            search_of=spec.settings_key if s.adaptive else None, fine=parse_step(s.lr_refine),
            refine=s.refine,
        )  # fmt: skip
        for line in cost.lines():
            print(f"# {line}", file=sys.stderr)
        return 0
    out = Path(args.out) if args.out else DEFAULT_ROOT / Path(args.spec).stem
    counts = run_sweep(spec, out, quiet=args.quiet, retry_failed=args.retry_failed)
    print(f"{out}: {counts.line(spec.settings.concurrent_runs)}")
    return 1 if counts.failed else 0
