"""``hptransfer report DIR``: report.html and summary.json for a results directory."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report DIR [--out OUT] [--open] [--reference NAME] [--target-width N]``;
    imports nothing heavy."""
    p = subparsers.add_parser(
        "report",
        help="write report.html and summary.json for a sweep directory",
        description="Analyse a sweep directory and write a self-contained report.html (tables, "
        "figures, provenance) and summary.json.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="sweep results directory (holds runs/)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: DIR)")
    p.add_argument("--open", action="store_true", help="open the report in a web browser")
    p.add_argument(
        "--reference",
        default=None,
        metavar="NAME",
        help="parameterization R_inf is measured against (default: lowest L_inf)",
    )
    p.add_argument(
        "--target-width",
        type=int,
        metavar="N",
        help="width of the 'what to use at width N' section (default: 8x the largest swept width)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the report; its ReportWarnings (unfinished or unreadable runs) print one line
    each on stderr."""
    import matplotlib

    matplotlib.use("Agg")
    from hptransfer.report import ReportWarning, build_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        html_path, summary_path = build_report(
            args.dir, args.out, reference=args.reference, target_width=args.target_width
        )
    for w in caught:
        if issubclass(w.category, ReportWarning):
            print(
                f"hptransfer report: warning: {' '.join(str(w.message).split())}", file=sys.stderr
            )
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    print(f"wrote {html_path}\nwrote {summary_path}")
    if args.open:
        import webbrowser

        try:
            webbrowser.open(html_path.resolve().as_uri())
        except webbrowser.Error:
            pass
    return 0
