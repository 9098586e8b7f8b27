"""[E] per-layer constants: gammas tuned at the base width against untuned ones, across widths.

[E] tuned one LR constant per role (gamma_input, gamma_hidden, gamma_output) at the base width
and found that, with the per-layer exponents, the tuned constants keep their benefit at every
width. The spec's ``[tune]`` table asks for that step: before the sweep, :func:`prepare` runs
``hptransfer tune``'s random search (experiments.tune) at the base width and the spec's LR
into ``DIR/tune`` and writes the best constants to ``DIR/tuned.toml``; the sweep then runs two
cases, every gamma = 1 (the control) and the tuned gammas, over the widths, seeds and LRs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hptransfer.experiments.repro.reproduction import Record

if TYPE_CHECKING:
    from hptransfer.analysis.transfer import Transfer
    from hptransfer.experiments.repro.verdict import Finding

SMOKE_TRIALS = 2
"""Random-search trials of a ``--smoke`` run."""


def label(key: Record) -> str:
    from hptransfer.experiments.tune import GAMMA_KEYS

    gammas = [float(key[k]) for k in GAMMA_KEYS]
    if all(g == 1.0 for g in gammas):
        return "gammas = 1 (untuned)"
    return "tuned gammas (" + ", ".join(f"{g:.3g}" for g in gammas) + ")"


def prepare(table: dict[str, Any], root: Path | None, smoke: bool) -> dict[str, Any]:
    """The spec's tables with ``[tune]`` replaced by two cases: every gamma 1, and (given a
    results directory ``root``) the gammas tuned at the base width; without ``root`` (spec
    checks) only the untuned case. ``[tune]``: ``trials`` and the ``lr`` the search runs at."""
    from hptransfer.config import ConfigError
    from hptransfer.experiments.tune import GAMMA_KEYS, tune_constants
    from hptransfer.sweep.spec import parse_base

    tune = table.get("tune")
    if not isinstance(tune, dict) or "trials" not in tune or "lr" not in tune:
        raise ConfigError("e_constants: the spec needs a [tune] table with trials and lr")
    out = {k: v for k, v in table.items() if k != "tune"}
    cases = [dict.fromkeys(GAMMA_KEYS, 1.0)]
    if root is not None:
        base = parse_base(out["base"], None).replace(**{"optimizer.lr": float(tune["lr"])})
        trials = SMOKE_TRIALS if smoke else int(tune["trials"])
        best = tune_constants(base, trials, root / "tune", recipe_out=root / "tuned.toml",
                              quiet=True)["best"]  # fmt: skip
        cases.append({k: float(best[k]) for k in GAMMA_KEYS})
    return {**out, "cases": cases}


def claims(transfer: Transfer, records: list[Record]) -> list[Finding]:
    """[E]: the constants tuned at the base width transfer with the per-layer exponents and
    keep a lower loss than untuned constants at the largest width."""
    from hptransfer.experiments.repro import verdict as v

    untuned = next(r for r in records if r["setting"].startswith("gammas = 1"))
    tuned = [r for r in records if r is not untuned]
    found = []
    for rec in tuned:
        found += [v.transfers(rec), v.lower_loss(transfer, rec, untuned, max(rec["width"]))]
    return found
