"""``hptransfer rules``: the exponents of a parameterization, per role or per parameter of a
model (a thin adapter over `make_rule` and `compute_specs`)."""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction

from hptransfer.config import (
    ALIGNMENT_PRESETS,
    LR_EXPONENTS,
    MODELS,
    OPTIMIZERS,
    PARAMETERIZATIONS,
    ConfigError,
    RunConfig,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
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
    p.add_argument("--lr-exponents", default="per_layer", choices=LR_EXPONENTS)
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
        metavar="MODEL",
        help=f"print the per-parameter table for a built-in model ({', '.join(MODELS)}) or "
        "your own, as model.factory names it: package.module:function or file.py:function",
    )
    p.add_argument("--width", type=int)
    p.add_argument("--base-width", type=int)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.set_defaults(func=run)
    return p


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
            raise ConfigError(
                f"--option {item!r}: write NAME=VALUE, e.g. max_preconditioner_dim=32"
            )
        if name not in knobs:
            raise ConfigError(
                f"--option {name}: {optimizer} has no such knob; valid: {', '.join(sorted(knobs))}"
            )
        out[name] = parse_value(value)
    return out


def _fmt(x) -> str:
    if isinstance(x, Fraction):
        return str(x)
    return f"{x + 0.0:.4g}"  # + 0.0 turns the solver's -0.0 into 0


def run(args: argparse.Namespace) -> int:
    from hptransfer.param.rules import make_rule

    alignment = _rules_alignment(args)
    options = _rule_options(args.option, args.optimizer)
    cfg = _config(args, options)
    rule = make_rule(
        args.param,
        args.optimizer,
        alignment,
        lr_exponents=args.lr_exponents,
        k_switches=args.k_switches or "",
        options=options,
        n_hidden=_hidden_depth(args, cfg),
    )
    if args.model:
        return _rules_for_model(cfg, rule, args.format)
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


def _hidden_depth(args: argparse.Namespace, cfg) -> int:
    """The solver's chain length: the measured run's model, else --model's, else 2."""
    run = args.run_cfg if args.alignment_from else cfg if args.model else None
    if run is None:
        return 2
    from hptransfer.assemble import solver_depth

    return solver_depth(run)


def _rules_alignment(args: argparse.Namespace):
    """Resolve --alignment / --alignment-from (which also supplies --param and --optimizer
    defaults from the run) and print the measured values."""
    if args.window and not args.alignment_from:
        raise ConfigError("--window needs --alignment-from")
    if args.alignment_from and (args.alignment or args.k_switches):
        raise ConfigError("--alignment-from replaces --alignment; do not give both")
    if not args.alignment_from:
        args.param = args.param or ("sp" if args.k_switches else "mup")
        args.optimizer = args.optimizer or "adam"
        args.alignment = args.alignment or "full"
        return args.alignment
    from hptransfer.analysis.alignment import alignment_from_run, parse_window
    from hptransfer.param.rules import measured_alignment
    from hptransfer.probes.alignment import EXPONENTS

    per_role, run_cfg = alignment_from_run(args.alignment_from, parse_window(args.window))
    args.measured = per_role
    args.run_cfg = run_cfg
    args.param = args.param or run_cfg.param.name
    args.optimizer = args.optimizer or run_cfg.optimizer.name
    args.alignment = "full"  # only for checking the settings as a config; the rule gets the values
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


def _config(args: argparse.Namespace, options: dict) -> RunConfig:
    """The settings of the rule (with --model: of its per-parameter table) as a run config, so
    the config's own checks refuse bad values, by key, before any rule is built."""
    keys = {
        "param.name": args.param,
        "optimizer.name": args.optimizer,
        "optimizer.options": options,
        "param.alignment": args.alignment,
        "param.lr_exponents": args.lr_exponents,
        "param.k_switches": args.k_switches or "",
    }
    if args.model:
        if args.width is None or args.base_width is None:
            raise ConfigError("--model needs --width and --base-width")
        keys |= {
            ("model.factory" if ":" in args.model else "model.name"): args.model,
            "model.width": args.width,
            "model.depth": args.depth,
            "model.head_dim": args.head_dim,
            "param.base_width": args.base_width,
        }
    return RunConfig().replace(**keys).validate()


def _rules_for_model(cfg: RunConfig, rule, fmt: str) -> int:
    from hptransfer.assemble import model_factory, model_scaling, run_roles, spec_options
    from hptransfer.param.apply import compute_specs
    from hptransfer.param.detect import check_stacking

    factory = model_factory(cfg)
    roles = run_roles(cfg, factory)
    specs = compute_specs(roles, rule, **spec_options(cfg))  # the run's own table
    if fmt == "json":
        params = [vars(s) | {"evidence": roles[s.name].evidence} for s in specs.values()]
        print(json.dumps({**rule.as_dict(), "params": params}, indent=1))
        return 0
    from hptransfer.param.apply import Parameterization

    # the parameterization's table, and where each role came from (the traced use)
    lines = Parameterization(rule, specs, [], cfg.optimizer.lr).format().splitlines()
    evidence = ["evidence"] + [roles[name].evidence for name in specs]
    width = max(map(len, lines))
    print("\n".join(f"{line.ljust(width)}  {e}".rstrip() for line, e in zip(lines, evidence)))
    found = model_scaling(cfg, factory)
    if found:  # the model's own width-dependent constants, and where the rule stacks on them
        print("\nthe model scales by width itself (measured at base width and width):")
        print("\n".join(f"  {s.format()}" for s in found))
        for message in check_stacking(found, roles, rule):
            print(f"  warning: {message}")
    if cfg.optimizer.name == "lamb":
        _lamb_clamp_warning(cfg)
    return 0


def _lamb_clamp_warning(cfg: RunConfig) -> None:
    """With LAMB's clamp on: the warning the run this config builds gives (`assemble.build`),
    naming the tensors whose norm at init is below the clamp, printed under the table."""
    import warnings

    from hptransfer.assemble import build
    from hptransfer.optim.lamb import ClampWarning

    with warnings.catch_warnings(record=True) as caught:  # the build's other warnings: above
        warnings.simplefilter("always")
        build(cfg).parameterization.remove()
    for w in caught:
        if issubclass(w.category, ClampWarning):
            print(f"\nwarning: {w.message}")
