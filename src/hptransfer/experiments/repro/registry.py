"""The reproductions, by name: their specs, setting columns, labels and analyses.

The reproductions that need only the generic transfer analysis (e_exponents, s_optimizers,
s_depth) keep their labels here; the others have a module of their own.
"""

from __future__ import annotations

from hptransfer.errors import ConfigError
from hptransfer.experiments.repro import alignment, e_epsilon, k_switches
from hptransfer.experiments.repro.reproduction import Record, Reproduction
from hptransfer.experiments.repro.transfer import analyse_transfer


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


def _optimizer_label(key: Record) -> str:
    return str(key["optimizer"])


def _depth_label(key: Record) -> str:
    p = float(key["param.depth_exponent"])
    if p == 0:
        return f"{key['optimizer']}, no depth multiplier"
    return f"{key['optimizer']}, branch x (L0/L)^{p:g}"


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
            name="s_optimizers",
            paper="S",
            claim="with each optimizer's spectral muP rule the optimal LR transfers across width "
            "for AdamW, ADOPT, LAMB, Sophia, Shampoo and Muon",
            specs=("s_optimizers.toml", "s_optimizers-sophia.toml", "s_optimizers-shampoo.toml"),
            by=("optimizer",),
            analyse=analyse_transfer,
            label=_optimizer_label,
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
