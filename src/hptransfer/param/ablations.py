"""Ablations on top of a rule: [K]'s SP -> muP switches and the residual-branch depth rules.

`hptransfer.param.rules.switch_rule` builds a switch combination's Rule from `switch_exponents`.
"""

from __future__ import annotations

from fractions import Fraction

from hptransfer.config import LR_EXPONENTS
from hptransfer.errors import ConfigError
from hptransfer.param.solver import HALF, SP_B, Number

#: [K]'s four SP -> muP switches (parameterizations.md §7), in the order of the digits of a code.
K_SWITCHES = ("embd", "attn", "norm", "readout")


def _check_code(code: str) -> None:
    if len(code) != 4 or set(code) - {"0", "1"}:
        raise ConfigError(f"k_switches must be four 0/1 digits such as '1000', got {code!r}")


def switch_name(code: str) -> str:
    """Name of a switch combination: "sp", "sp+embd", ..., "sp+attn+norm+readout", "mup"."""
    _check_code(code)
    if code == "1111":
        return "mup"
    on = [name for name, digit in zip(K_SWITCHES, code) if digit == "1"]
    return "+".join(["sp", *on])


#: All 16 combinations: code -> name.
SWITCH_COMBINATIONS = {code: switch_name(code) for code in (format(i, "04b") for i in range(16))}


def switch_exponents(
    code: str, direct: dict[str, tuple[Number, Number]], lr_exponents: str
) -> tuple[dict[str, tuple[Number, Number]], dict[str, Number]]:
    """The (a, b) per role and c per role (vector too) of [K]'s ablation ``code``, from muP's
    (b, c) per role folded into the direct form (a = 0): ``direct`` (see
    `hptransfer.param.rules.switch_rule`)."""
    _check_code(code)
    if lr_exponents not in LR_EXPONENTS:
        raise ConfigError(f"lr_exponents={lr_exponents!r}; choose one of {', '.join(LR_EXPONENTS)}")
    c_hid = direct["hidden"][1]
    c_h = c_hid if lr_exponents == "per_layer" else Fraction(0)
    embd, _, norm, readout = (digit == "1" for digit in code)
    b_out = direct["output"][0] if readout else SP_B["output"]
    abc: dict[str, tuple[Number, Number]] = {
        "input": (Fraction(0), Fraction(0)),
        "hidden": (Fraction(0), HALF),
        "output": (Fraction(0), b_out),
    }
    cs = {
        "input": c_h + (direct["input"][1] - c_hid if embd else 0),
        "hidden": c_h,
        "output": c_h + (direct["output"][1] - c_hid if readout else 0),
        "vector": c_h + (direct["vector"][1] - c_hid if norm else 0),
    }
    return abc, cs


def depth_multiplier(depth: int, depth_base: int, exponent: float) -> float:
    """Residual-branch multiplier (depth_base / depth)^exponent ([S], parameterizations.md §6):
    exponent 1/2 is depth-muP, 1 CompleteP, 0 off. Equal to 1 at the base depth."""
    if depth < 1 or depth_base < 1:
        raise ConfigError(f"depth and depth_base must be >= 1, got {depth} and {depth_base}")
    multiplier: float = (depth_base / depth) ** exponent
    return multiplier


def depth_lr_factor(family: str, depth: int, depth_base: int, exponent: float) -> float:
    """Hidden-layer LR factor that goes with the branch multiplier L^-p (L = depth).

    Derived, not from parameterizations.md: a block's update moves the residual stream by
    (LR x update size) x L^-p, and the L blocks' updates add up coherently, so the total is
    depth-free when LR ~ L^(p (1 + d) - 1), with d the update's degree in the gradient: d = 0
    for scale-free steps (Adam family, Muon, LAMB, Shampoo, Adam + parameter scaling), d = 1
    for SGD (whose gradient already carries the multiplier). Hence (L0/L)^(1-p) (depth-muP with
    Adam: 1/sqrt; CompleteP: 1) and (L0/L)^(1-2p) for SGD (depth-muP: 1).
    """
    d = 1 if family == "sgd" else 0
    return depth_multiplier(depth, depth_base, 1 - exponent * (1 + d))
