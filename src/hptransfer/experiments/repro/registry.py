"""The reproductions, by name: their specs, setting columns, labels and analyses.

The reproductions that need only the generic transfer analysis (e_exponents, s_depth,
k_weight_decay's claims) keep their labels here; the others have a module of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hptransfer.errors import ConfigError
from hptransfer.experiments.repro import (
    alignment,
    e_constants,
    e_epsilon,
    k_switches,
    s_optimizers,
)
from hptransfer.experiments.repro import verdict as v
from hptransfer.experiments.repro.reproduction import Record, Reproduction
from hptransfer.experiments.repro.transfer import analyse_transfer

if TYPE_CHECKING:
    from hptransfer.analysis.transfer import Transfer
    from hptransfer.experiments.repro.verdict import Finding


def _e_exponents_label(key: Record) -> str:
    if key["param.lr_exponents"] == "global":
        return f"{key['parameterization']} global LR"
    return f"{key['parameterization']} per-layer ({key['param.alignment']} alignment)"


def _e_exponents_style(rec: Record) -> Record:
    colors = {"sp": "C0", "mup": "C1", "mfp": "C2"}
    if rec["param.lr_exponents"] == "global":
        ls, marker = "-", "o"
    else:
        ls, marker = ("--", "s") if rec["param.alignment"] == "full" else (":", "^")
    return {"color": colors.get(rec["parameterization"], "k"), "ls": ls, "marker": marker,
            "ms": 4}  # fmt: skip


def _e_exponents_claims(transfer: Transfer, records: list[Record]) -> list[Finding]:
    """[E]: one global LR drifts for every parameterization; full-alignment per-layer
    exponents transfer for every one and move less than one global LR (the control); SP
    per-layer ends below muP per-layer (largest width)."""
    names = sorted({str(r["parameterization"]) for r in records})
    control = {name: v.find(records, parameterization=name, param__lr_exponents="global")
               for name in names}  # fmt: skip
    found = [v.drifts(rec) for rec in control.values()]
    per_layer = {
        name: v.find(records, parameterization=name, param__lr_exponents="per_layer",
                     param__alignment="full")
        for name in names
    }  # fmt: skip
    for name, rec in per_layer.items():
        found += [v.transfers(rec), v.less_drift(transfer, rec, control[name])]
    if {"sp", "mup"} <= set(names):
        top = max(per_layer["sp"]["width"])
        found.append(v.lower_loss(transfer, per_layer["sp"], per_layer["mup"], top))
    return found


def _depth_label(key: Record) -> str:
    p = float(key["param.depth_exponent"])
    if p == 0:
        return f"{key['optimizer']}, no depth multiplier"
    return f"{key['optimizer']}, branch x (L0/L)^{p:g}"


def _depth_claims(transfer: Transfer, records: list[Record]) -> list[Finding]:
    """[S]: with each multiplier, each optimizer's optimum moves less with depth than without
    one (the control, p = 0), and CompleteP (p = 1) transfers."""
    found = []
    for opt in sorted({str(r["optimizer"]) for r in records}):
        control = v.find(records, optimizer=opt, param__depth_exponent=0.0)
        for p in (0.5, 1.0):
            rec = v.find(records, optimizer=opt, param__depth_exponent=p)
            found.append(v.less_drift(transfer, rec, control))
        found.append(v.transfers(v.find(records, optimizer=opt, param__depth_exponent=1.0)))
    return found


def _decay_label(key: Record) -> str:
    wd = float(key["optimizer.weight_decay"])
    return "adamw, no weight decay" if wd == 0 else f"adamw, weight decay {wd:g}"


def _decay_claims(transfer: Transfer, records: list[Record]) -> list[Finding]:
    """[K]: weight decay improves the optimal-LR law's fit E and worsens kappa (the growth
    of the sensitivity to LR errors with width), in the tokens-per-parameter setting."""
    none = v.find(records, optimizer__weight_decay=0.0)
    decay = next(r for r in records if r is not none)
    return [v.fit_smaller(transfer, decay, none, "E", digits=3),
            v.fit_smaller(transfer, none, decay, "kappa")]  # fmt: skip


REPRODUCTIONS: dict[str, Reproduction] = {
    r.name: r
    for r in (
        Reproduction(
            name="e_exponents",
            paper="E",
            claim="with per-layer LR exponents every parameterization transfers; one global "
            "LR drifts (SP's optimum falls with width)",
            specs=("e_exponents.toml", "e_exponents-global.toml"),
            by=("parameterization", "param.lr_exponents", "param.alignment"),
            analyse=analyse_transfer,
            label=_e_exponents_label,
            claims=_e_exponents_claims,
            style=_e_exponents_style,
        ),
        Reproduction(
            name="e_epsilon",
            paper="E",
            claim="a constant Adam epsilon underflows as gradients shrink with width and breaks "
            "transfer; per-layer epsilon and Adam-atan2 avoid it",
            specs=("e_epsilon.toml", "e_epsilon-atan2.toml"),
            by=("optimizer", "param.eps_mode"),
            analyse=e_epsilon.analyse,
            label=e_epsilon.label,
            claims=e_epsilon.claims,
            measure=e_epsilon.measure_probe,
        ),
        Reproduction(
            name="e_alignment",
            paper="E",
            claim="measured alignment lies between the full and no-alignment assumptions, "
            "differs per role and changes over training",
            specs=("e_alignment.toml",),
            by=("parameterization", "optimizer"),
            analyse=alignment.analyse,
            label=alignment.label,
        ),
        Reproduction(
            name="e_constants",
            paper="E",
            claim="per-role LR constants tuned at the base width keep their benefit at every "
            "width with the per-layer exponents",
            specs=("e_constants.toml",),
            by=("param.gamma_input", "param.gamma_hidden", "param.gamma_output"),
            analyse=analyse_transfer,
            label=e_constants.label,
            claims=e_constants.claims,
            prepare=e_constants.prepare,
        ),
        Reproduction(
            name="s_optimizers",
            paper="S",
            claim="with each optimizer's spectral muP rule the optimal LR transfers across width "
            "for AdamW, ADOPT, LAMB, Sophia, Shampoo and Muon",
            specs=("s_optimizers.toml", "s_optimizers-control.toml", "s_optimizers-shampoo.toml"),
            by=("optimizer", "param.lr_exponents"),
            analyse=s_optimizers.analyse,
            label=s_optimizers.label,
            claims=s_optimizers.claims,
            measure=s_optimizers.measure,
            style=s_optimizers.style,
        ),
        Reproduction(
            name="k_switches",
            paper="K",
            claim="under AdamW the embedding-LR switch alone (SP+Embd) gives most of muP's "
            "benefit: E of SP 0.021, SP+Embd 0.0016, muP 0.00093, muP without it 0.048",
            specs=("k_switches.toml",),
            by=("param.k_switches",),
            analyse=k_switches.analyse,
            label=k_switches.label,
            claims=k_switches.claims,
        ),
        Reproduction(
            name="k_weight_decay",
            paper="K",
            claim="weight decay improves the optimal-LR law's fit E but worsens kappa (LR "
            "sensitivity growing with width) at a fixed number of tokens per parameter",
            specs=("k_weight_decay.toml",),
            by=("optimizer.weight_decay",),
            analyse=k_switches.analyse,
            label=_decay_label,
            claims=_decay_claims,
        ),
        Reproduction(
            name="s_depth",
            paper="S",
            claim="residual-branch multipliers (L0/L)^p let the optimal LR transfer across "
            "depth for AdamW and Muon",
            specs=("s_depth.toml", "s_depth-muon.toml"),
            by=("optimizer", "param.depth_exponent"),
            analyse=analyse_transfer,
            label=_depth_label,
            claims=_depth_claims,
            x="model.depth",
        ),
    )
}


def get(name: str) -> Reproduction:
    """The reproduction called ``name``; ConfigError naming the choices otherwise."""
    if name not in REPRODUCTIONS:
        raise ConfigError(
            f"unknown reproduction {name!r}; choose one of {', '.join(REPRODUCTIONS)}"
        )
    return REPRODUCTIONS[name]
