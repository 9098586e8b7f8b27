"""Run every benchmark, print one table, write benchmarks/RESULTS.md and benchmarks/results.json.

Sections (each a module here; each reports ratios measured side by side in one process):

* param_overhead: parameterized nanodo vs plain PyTorch, and the trainer loop vs a bare step
* mfu: model FLOPs utilization in float32 and bf16 autocast, and bf16's speedup
* width_scaling: step-time exponent in width against the FLOP count's (from the mfu times)
* optimizers: optimizer step time relative to torch AdamW (bench_optimizers.py)
* sweep: end-to-end runs per hour of the demo sweep and of a tiny grid per worker count
* checkpoint: training-loop time with train.checkpoint_every = 100 over without

``--quick`` (``make bench-quick``, under 3 minutes on 2 idle cores) shrinks every section,
skips the demo sweep (about 4 minutes by itself) and only prints the table; the full run
(``make bench``, about 10 minutes) also writes the two files. A section that fails is reported
in the table and the files, and the others still run. Sections of RESULTS.md whose heading
says "run by hand" (benchmarks run_all does not run) are kept at its end.

Usage: ``python benchmarks/run_all.py [--quick] [--threads N] [--device auto|cpu|cuda]
[--only SECTION ...] [--write]``
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from timing import machine, resolve_device

HERE = Path(__file__).parent
SECTIONS = ("param_overhead", "mfu", "optimizers", "sweep", "checkpoint")

# metric -> (target, "max" or "min"): the targets the issue sets
TARGETS = {
    "param_overhead_ratio_w128": (1.03, "max"),
    "param_overhead_ratio_w256": (1.03, "max"),
    "mfu_fp32_w512": (0.70, "min"),
    "mfu_fp32_w1024": (0.70, "min"),
    "bf16_speedup_w512": (1.6, "min"),
    "checkpoint_overhead_every100": (1.02, "max"),
}


def param_overhead(quick: bool, device: str) -> dict[str, Any]:
    import bench_param_overhead

    return bench_param_overhead.run(quick)


def mfu(quick: bool, device: str) -> dict[str, Any]:
    import bench_mfu
    import bench_width_scaling

    out = bench_mfu.run(quick, device)
    out.update(bench_width_scaling.fit(out))
    return out


def optimizers(quick: bool, device: str) -> dict[str, Any]:
    import bench_optimizers

    if not quick:
        return {f"opt_ratio_{k.replace('/', '_')}": v for k, v in bench_optimizers.run().items()}
    secs = bench_optimizers.block_times(128, repeats=3, skip=tuple(bench_optimizers.REFERENCES))
    out = {
        f"opt_ratio_w128_{name}": bench_optimizers._ratio(secs, name, "adamw_torch")
        for name in bench_optimizers.OPTIMIZERS
    }
    out["opt_ratio_w128_adamw_torch_ms"] = 1e3 * statistics.median(secs["adamw_torch"])
    return out


def sweep(quick: bool, device: str) -> dict[str, Any]:
    import bench_sweep

    from hptransfer.experiments.demo import RECIPE
    from hptransfer.store import load_runs
    from hptransfer.sweep import parse_spec, run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        out: dict[str, Any] = {
            f"sweep_runs_per_hour_{k}": v
            for k, v in bench_sweep.runs_per_hour(quick, Path(tmp)).items()
        }
        if quick:
            out["sweep_demo_runs_per_hour"] = "skipped in --quick (the demo takes ~2 min)"
            return out
        spec = parse_spec(tomllib.loads(RECIPE.read_text()))
        start = time.perf_counter()
        counts = run_sweep(spec, Path(tmp) / "demo", quiet=True)
        wall = time.perf_counter() - start
        finished = counts.done + counts.diverged + counts.failed
        out["sweep_demo_runs"] = finished
        out["sweep_demo_wall_s"] = wall
        out["sweep_demo_runs_per_hour"] = 3600 * finished / wall
        # the share of worker time spent inside train(): the rest is process start-up, run
        # bookkeeping and workers idling while an adaptive search waits for its last run
        busy = load_runs(Path(tmp) / "demo")["wall_time_s"].sum()
        out["sweep_demo_worker_utilization"] = busy / (spec.settings.workers * wall)
    return out


def checkpoint(quick: bool, device: str) -> dict[str, Any]:
    import bench_checkpoint

    return bench_checkpoint.run(quick, device)


RUNNERS: dict[str, Callable[[bool, str], dict[str, Any]]] = {
    "param_overhead": param_overhead,
    "mfu": mfu,
    "optimizers": optimizers,
    "sweep": sweep,
    "checkpoint": checkpoint,
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _verdict(key: str, value: Any) -> tuple[str, str]:
    if key not in TARGETS or not isinstance(value, (int, float)):
        return "", ""
    target, kind = TARGETS[key]
    met = value <= target if kind == "max" else value >= target
    return (f"<= {target}" if kind == "max" else f">= {target}"), ("yes" if met else "NO")


def headline(results: dict[str, Any]) -> str:
    """The issue's targets and the demo sweep throughput, one row each."""
    lines = ["| metric | value | target | met |", "|---|---|---|---|"]
    extra = (
        "trainer_overhead_ratio_w128",
        "sweep_demo_runs_per_hour",
        "sweep_demo_worker_utilization",
    )
    for key in (*TARGETS, *extra):
        value = results.get(key, "not run")
        target, met = _verdict(key, value)
        lines.append(f"| {key} | {_fmt(value)} | {target} | {met} |")
    return "\n".join(lines)


def table(results: dict[str, Any], sections: dict[str, dict[str, Any]]) -> str:
    """Every result, grouped by section (failed sections show their error)."""
    lines = ["| section | metric | value |", "|---|---|---|"]
    for name, info in sections.items():
        if info.get("error"):
            lines.append(f"| {name} | FAILED | {info['error']} |")
        for key in info.get("keys", []):
            lines.append(f"| {name} | {key} | {_fmt(results[key])} |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    head = [
        "# Benchmark results",
        "",
        f"Written by `benchmarks/run_all.py{' --quick' if report['quick'] else ''}` (`make bench`)"
        f" on {report['date']}.",
        "Ratios are measured side by side in one process; absolute times and throughputs depend",
        "on the load of the machine (its load average at the start is in the table below). The",
        "setup of each number is in its bench_*.py docstring; docs/performance.md explains them.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in m.items()),
        "",
        "## Targets",
        "",
        headline(report["results"]),
        "",
        "## All results",
        "",
        table(report["results"], report["sections"]),
        "",
        "## Sections",
        "",
        "| section | run at | seconds |",
        "|---|---|---|",
        *(
            f"| {k} | {v.get('date', report['date'])} | {v['seconds']:.0f} |"
            for k, v in report["sections"].items()
        ),
        "",
    ]
    return "\n".join(head)


META = ("machine", "quick", "date", "sections")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def merge_previous(report: dict[str, Any]) -> None:
    """Keep the sections of the existing results.json that this run did not redo (--only)."""
    path = HERE / "results.json"
    if not path.is_file():
        return
    flat = json.loads(path.read_text())
    for name, info in flat.get("sections", {}).items():
        if name not in report["sections"]:
            report["sections"][name] = {"date": flat.get("date"), **info}
            for key in info.get("keys", []):
                report["results"].setdefault(key, flat.get(key))
    report["sections"] = {n: report["sections"][n] for n in SECTIONS if n in report["sections"]}


HAND_RUN = re.compile(r"^## .*run by hand", re.MULTILINE)


def hand_run_sections(text: str) -> str:
    """The sections of RESULTS.md that benchmarks run by hand wrote (their heading says "run by
    hand"), from the first of them to the end: run_all regenerates the rest and keeps these."""
    found = HAND_RUN.search(text)
    return "\n" + text[found.start() :] if found else ""


def write(report: dict[str, Any]) -> None:
    path = HERE / "RESULTS.md"
    kept = hand_run_sections(path.read_text()) if path.is_file() else ""
    path.write_text(markdown(report) + kept)
    flat = {**report["results"], **{k: report[k] for k in META}}
    (HERE / "results.json").write_text(json.dumps(flat, indent=1, sort_keys=True) + "\n")
    print(f"\nwrote {HERE / 'RESULTS.md'} and {HERE / 'results.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced version; prints only")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="for mfu")
    ap.add_argument(
        "--only", nargs="+", choices=SECTIONS, help="run these sections; the files keep the rest"
    )
    ap.add_argument("--write", action="store_true", help="write the files in --quick mode too")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "date": _now(),
        "quick": args.quick,
        "machine": machine(resolve_device(args.device)),
        "results": {},
        "sections": {},
    }
    for name in args.only or SECTIONS:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        info: dict[str, Any] = {"date": _now()}
        try:
            got = RUNNERS[name](args.quick, args.device)
            report["results"].update(got)
            info["keys"] = list(got)
        except Exception as e:  # a broken section must not cost the others
            traceback.print_exc()
            info["error"] = f"{type(e).__name__}: {e}".replace("|", "/").splitlines()[0]
        info["seconds"] = time.perf_counter() - start
        report["sections"][name] = info
    print()
    print(table(report["results"], report["sections"]))
    print()
    print(headline(report["results"]))
    if not args.quick or args.write:
        if args.only:
            merge_previous(report)
        write(report)


if __name__ == "__main__":
    main()
