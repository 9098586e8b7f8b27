"""hptransfer command line: one subcommand per stage, each a thin adapter over the library.

Heavy imports (torch, pandas, matplotlib) happen inside the command functions, so
`hptransfer --help` stays fast. Bad input prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from fractions import Fraction
from pathlib import Path

from hptransfer.config import (
    ALIGNMENT_PRESETS,
    OPTIMIZERS,
    PARAMETERIZATIONS,
    ConfigError,
    RunConfig,
    load_recipe,
    parse_sets,
)


class UsageError(ConfigError):
    """Bad command-line input."""


def _config(args: argparse.Namespace) -> RunConfig:
    overrides = parse_sets(args.set or [])
    if getattr(args, "recipe", None):
        return load_recipe(args.recipe, overrides)
    return RunConfig().replace(**overrides).validate()


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    out = Path(args.out) if args.out else Path("hpt-results") / "train" / cfg.run_id()
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


def _rule_options(items: list[str], optimizer: str) -> dict:
    """``--option NAME=VALUE`` pairs (values in TOML syntax, as for --set), checked against
    the optimizer's knobs."""
    if not items:
        return {}
    from hptransfer.config import parse_value
    from hptransfer.optim import optimizer_knobs

    knobs = optimizer_knobs(optimizer)
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--option {item!r}: write NAME=VALUE, e.g. max_preconditioner_dim=32")
        if name not in knobs:
            raise UsageError(
                f"--option {name}: {optimizer} has no such knob; valid: {', '.join(sorted(knobs))}"
            )
        out[name] = parse_value(value)
    return out


def _fmt(x) -> str:
    if isinstance(x, Fraction):
        return str(x)
    return f"{x + 0.0:.4g}"  # + 0.0 turns the solver's -0.0 into 0


def cmd_rules(args: argparse.Namespace) -> int:
    from hptransfer.param.rules import make_rule

    alignment = _rules_alignment(args)
    rule = make_rule(
        args.param,
        args.optimizer,
        alignment,
        lr_exponents=args.lr_exponents,
        k_switches=args.k_switches or "",
        options=_rule_options(args.option, args.optimizer),
    )
    if args.model:
        return _rules_for_model(args, rule)
    if args.format == "json":
        d = rule.as_dict()
        if args.alignment_from:
            d["measured_alignment"] = args.measured
        print(json.dumps(d, indent=1))
        return 0
    print(
        f"{rule.parameterization} + {rule.optimizer} (rule {rule.family}), alignment "
        f"{rule.alignment}, LR exponents {args.lr_exponents}"
    )
    print(
        "  W = n^-a w   init std n^-b   LR = beta * gamma * width_mult^-c   "
        "per-layer eps ~ width_mult^-g"
    )
    print(f"  {'role':<8}{'a':>8}{'b':>8}{'c':>8}{'g':>8}")
    for role, r in rule.roles.items():
        print(f"  {role:<8}{_fmt(r.a):>8}{_fmt(r.b):>8}{_fmt(r.c):>8}{_fmt(r.g):>8}")
    if rule.block_size is not None:
        print(
            f"  blocks of at most {rule.block_size}: each matrix's LR also x "
            "sqrt(blocks at base width / blocks) (1 while no side exceeds the block size)"
        )
    return 0


def _rules_alignment(args: argparse.Namespace):
    """Resolve --alignment / --alignment-from (which also supplies --param and --optimizer
    defaults from the run) and print the measured values."""
    if args.window and not args.alignment_from:
        raise UsageError("--window needs --alignment-from")
    if args.alignment_from and (args.alignment or args.k_switches):
        raise UsageError("--alignment-from replaces --alignment; do not give both")
    if args.k_switches and args.param not in (None, "sp"):
        raise UsageError("--k-switches applies on top of sp; drop --param or use --param sp")
    if not args.alignment_from:
        args.param = args.param or ("sp" if args.k_switches else "mup")
        args.optimizer = args.optimizer or "adam"
        args.alignment = args.alignment or "full"
        return args.alignment
    from hptransfer.alignment import EXPONENTS, alignment_from_run, parse_window
    from hptransfer.param.rules import measured_alignment

    per_role, run_cfg = alignment_from_run(args.alignment_from, parse_window(args.window))
    args.measured = per_role
    args.param = args.param or run_cfg.param.name
    args.optimizer = args.optimizer or run_cfg.optimizer.name
    args.alignment = "full"  # only for validating the --model config; the rule gets the values
    values = {r: [round(per_role[r][e], 4) for e in EXPONENTS] for r in ("hidden", "output")}
    out = sys.stderr if args.format == "json" else sys.stdout
    print(f"alignment measured in {args.alignment_from} (mean over layers and probes):", file=out)
    print(f"  {'role':<8}{'alpha':>8}{'omega':>8}{'u':>8}  {'probes':>6}  steps", file=out)
    for role, v in sorted(per_role.items()):
        first, last = v["steps"]
        print(
            f"  {role:<8}{v['alpha']:>8.4f}{v['omega']:>8.4f}{v['u']:>8.4f}  "
            f"{v['n_probes']:>6}  {first}..{last}",
            file=out,
        )
    print(
        "  to train with them: --set param.alignment=measured "
        + " ".join(f"--set 'param.alignment_values.{r}={values[r]}'" for r in values),
        file=out,
    )
    return measured_alignment(values)


def _rules_for_model(args: argparse.Namespace, rule) -> int:
    if args.width is None or args.base_width is None:
        raise UsageError("--model needs --width and --base-width")
    cfg = (
        RunConfig()
        .replace(
            **{
                "model.name": args.model,
                "model.width": args.width,
                "model.depth": args.depth,
                "model.head_dim": args.head_dim,
                "param.base_width": args.base_width,
                "param.name": args.param,
                "optimizer.name": args.optimizer,
                "param.alignment": args.alignment,
                "param.lr_exponents": args.lr_exponents,
            }
        )
        .validate()
    )
    from hptransfer.param.apply import compute_specs
    from hptransfer.param.roles import roles_from_factory
    from hptransfer.train import model_factory

    roles = roles_from_factory(model_factory(cfg), args.width, args.base_width)
    specs = compute_specs(roles, rule)
    if args.format == "json":
        print(json.dumps({**rule.as_dict(), "params": [vars(s) for s in specs.values()]}, indent=1))
        return 0
    from hptransfer.param.apply import Parameterization

    print(Parameterization(rule, specs, []).format())
    return 0


def cmd_coord_check(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        raise UsageError(
            f"--widths expects integers separated by commas, got {args.widths!r}"
        ) from None
    for w in widths:
        cfg.replace(**{"model.width": w}).validate()
    out = Path(args.out)
    from hptransfer.analysis.coord import coord_slopes
    from hptransfer.plots import plot_coord_check
    from hptransfer.probes import coord_check

    df = coord_check(cfg, widths, steps=args.steps, seeds=range(args.seeds))
    slopes = coord_slopes(df)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "coord.csv", index=False)
    slopes.to_csv(out / "slopes.csv", index=False)
    ax = plot_coord_check(df, step=args.steps - 1)
    ax.figure.savefig(out / "coord.png", dpi=120, bbox_inches="tight")
    last = slopes[slopes.step == args.steps - 1]
    print(
        f"log-log slope of activation RMS vs width at step {args.steps - 1} "
        f"({cfg.param.name} + {cfg.optimizer.name}, widths {widths}):"
    )
    for _, row in last.iterrows():
        print(f"  {row.layer:<28} {row.slope:+.3f}")
    print(f"-> {out}/coord.csv, {out}/coord.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hptransfer",
        description="Width-scaling parameterizations and hyperparameter transfer.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser, recipe_required: bool) -> None:
        if recipe_required:
            p.add_argument("recipe", help="recipe TOML file")
        else:
            p.add_argument("recipe", nargs="?", help="recipe TOML file (default: built-in)")
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set model.width=256 (repeatable)",
        )

    p = sub.add_parser("train", help="train one run from a recipe")
    with_config(p, True)
    p.add_argument("--out", help="run directory (default hpt-results/train/RUN_ID)")
    p.add_argument("--quiet", action="store_true", help="no per-eval progress lines")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "rules",
        help="print the exponents of a parameterization (per role or per parameter of a model)",
    )
    p.add_argument("--param", choices=PARAMETERIZATIONS, help="default mup (or the run's)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default adam (or the run's)")
    p.add_argument("--alignment", choices=ALIGNMENT_PRESETS, help="default full")
    p.add_argument(
        "--alignment-from",
        metavar="RUN_DIR",
        help="derive c from the alignment probes of a run (trained with train.align_every > 0)",
    )
    p.add_argument(
        "--window",
        metavar="START:END",
        help="with --alignment-from: average the probes taken after START..END steps",
    )
    p.add_argument(
        "--k-switches",
        metavar="CODE",
        help="[K]'s SP -> muP switches, four 0/1 digits (embd, attn, norm, readout), e.g. 1000",
    )
    p.add_argument("--lr-exponents", default="per_layer", choices=("per_layer", "global"))
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an optimizer knob that changes its rule, e.g. --option max_preconditioner_dim=32 "
        "for shampoo, --option grafting=adam (repeatable; as optimizer.options.NAME)",
    )
    p.add_argument("--format", default="table", choices=("table", "json"))
    p.add_argument(
        "--model",
        choices=("nanodo", "mlp", "llama"),
        help="print the per-parameter table for this model",
    )
    p.add_argument("--width", type=int)
    p.add_argument("--base-width", type=int)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser("coord-check", help="activation RMS per layer across widths")
    with_config(p, False)
    p.add_argument("--widths", default="64,128,256,512", help="comma-separated widths")
    p.add_argument("--steps", type=int, default=6, help="training steps recorded")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds averaged")
    p.add_argument("--out", default="hpt-results/coord-check", help="output directory")
    p.set_defaults(func=cmd_coord_check)

    # stages owned by their own modules; each registers its parser (no heavy imports there)
    from hptransfer import demo, predict_cli, report, repro, tune
    from hptransfer.sweep import command as sweep_command
    from hptransfer.sweep import ls

    for module in (demo, sweep_command, ls, tune, report, predict_cli, repro):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"hptransfer {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
