"""Alignment exponents alpha, omega, u of [E] (parameterizations.md §3), measured in training.

For a linear layer z = W x with W = W0 + dW and x = x0 + dx (dx: the change of the layer's
INPUT on a fixed batch),

    W x = W0 x0 + dW x0 + W0 dx + dW dx,

and each update term is compared with the product of the RMS sizes of its two factors:

    alpha = log_n( rms(dW x0) / (rms(dW) rms(x0)) )
    omega = log_n( rms(W0 dx) / (rms(W0) rms(dx)) )
    u     = log_n( rms(dW dx) / (rms(dW) rms(dx)) )

with rms over all entries and n the layer's fan_in (the log base). A sum of n independent
terms grows like sqrt(n) (exponent 1/2); a rank-1 dW = s a x0^T lined up with its input gives
n (exponent 1). The ratios do not depend on a scalar factor on W or x, so forward multipliers
(whichever side of the layer they act on) leave the exponents unchanged. The exponents carry an
O(1 / log n) bias from constants (e.g. dx along the top singular vector of a Gaussian W0 gives
omega = 1/2 + log_n 2), so compare them across widths, not to 1/2 and 1 at small n.

`alignment_exponents` is the math on tensors; `AlignmentProbe` records x0 and W0 of every
``nn.Linear`` of a model on a fixed batch and measures the exponents later (an extra forward
pass on that batch, then three float64 matmuls per layer). `alignment_from_metrics` averages a
run's logged exponents per role over a window of steps, for the "measured" alignment preset.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hptransfer.errors import ConfigError

EXPONENTS = ("alpha", "omega", "u")
PREFIX = "align"


def _rms(x: Tensor) -> Tensor:
    return x.pow(2).mean().sqrt()


def alignment_ratio(a: Tensor, b: Tensor, product: Tensor) -> float:
    """rms(product) / (rms(a) * rms(b)); nan when a factor is zero or anything is non-finite."""
    denom = _rms(a) * _rms(b)
    ratio = (_rms(product) / denom).item() if denom > 0 else math.nan
    return ratio if math.isfinite(ratio) and ratio > 0 else math.nan


def alignment_exponents(
    w0_OxI: Tensor, w_OxI: Tensor, x0_NxI: Tensor, x_NxI: Tensor
) -> dict[str, float]:
    """alpha, omega and u of one linear layer (weights out x in, inputs tokens x in).

    Computed in float64. An exponent whose factors vanish (no update yet, an input that does
    not change, such as a layer fed by a frozen embedding) is nan.
    """
    fan_in = w0_OxI.shape[1]
    if fan_in < 2:
        raise ValueError(f"alignment needs fan_in >= 2 (the log base), got {fan_in}")
    w0, x0 = w0_OxI.double(), x0_NxI.double()
    dw = w_OxI.double() - w0
    dx = x_NxI.double() - x0
    log_n = math.log(fan_in)
    ratios = {
        "alpha": alignment_ratio(dw, x0, x0 @ dw.T),
        "omega": alignment_ratio(w0, dx, dx @ w0.T),
        "u": alignment_ratio(dw, dx, dx @ dw.T),
    }
    return {k: math.log(r) / log_n for k, r in ratios.items()}


def metric_key(exponent: str, param_name: str) -> str:
    """The metrics.jsonl key of one exponent of one layer, e.g. ``align/alpha/head.weight``."""
    return f"{PREFIX}/{exponent}/{param_name}"


class AlignmentProbe:
    """Alignment exponents of every ``nn.Linear`` of ``model`` on a fixed batch.

    Construction runs ``forward()`` once (no grad) and keeps each layer's weight W0 and input x0
    (float64 copies; layers fed the same tensor, such as q, k and v, share one copy). `measure`
    runs ``forward()`` again and returns ``{align/<exponent>/<weight name>: value}``, leaving
    out nan values. Hooks exist only while ``forward()`` runs, so the probe costs nothing
    between measurements and does not change training (no RNG, no autograd state).

    Args:
        model: the model; its ``nn.Linear`` modules with fan_in >= 2 are probed.
        forward: runs the model on the fixed batch (e.g. ``lambda: model(x0)``).
    """

    def __init__(self, model: nn.Module, forward: Callable[[], Any]) -> None:
        self.model = model
        self.forward = forward
        self.layers = {
            f"{name}.weight" if name else "weight": module
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module.in_features >= 2
        }
        if not self.layers:
            raise ValueError("alignment probe: the model has no nn.Linear layer with fan_in >= 2")
        self.w0 = {n: m.weight.detach().double().clone() for n, m in self.layers.items()}
        self.x0 = self._inputs()

    @torch.no_grad()
    def _inputs(self) -> dict[str, Tensor]:
        """Each layer's input on the fixed batch, flattened to tokens x fan_in, in float64."""
        captured: dict[str, Tensor] = {}
        # one float64 copy per distinct input tensor; the tensor is kept alive alongside so its
        # id cannot be reused by a later input during this forward pass
        by_tensor: dict[int, tuple[Tensor, Tensor]] = {}

        def hook_for(name: str):
            def hook(module: nn.Module, args: tuple) -> None:
                x = args[0]
                if id(x) not in by_tensor:
                    by_tensor[id(x)] = (x, x.detach().reshape(-1, x.shape[-1]).double())
                captured[name] = by_tensor[id(x)][1]

            return hook

        handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in self.layers.items()]
        was_training = self.model.training
        try:
            self.model.eval()
            self.forward()
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        missing = sorted(set(self.layers) - set(captured))
        if missing:
            raise ValueError(f"alignment probe: forward() did not call {missing[:3]}")
        return captured

    def measure(self) -> dict[str, float]:
        """Exponents of every probed layer at the current weights (see the class docstring)."""
        x_now = self._inputs()
        out: dict[str, float] = {}
        with torch.no_grad():
            for name, module in self.layers.items():
                values = alignment_exponents(
                    self.w0[name], module.weight.detach(), self.x0[name], x_now[name]
                )
                for exponent, value in values.items():
                    if math.isfinite(value):
                        out[metric_key(exponent, name)] = value
        return out


def parse_window(text: str | None) -> tuple[int | None, int | None]:
    """``"START:END"`` (either side may be empty; both inclusive) -> (start, end)."""
    if not text:
        return None, None
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (int(start) if start.strip() else None, int(end) if end.strip() else None)
    except ValueError:
        raise ConfigError(f"--window expects START:END in training steps, got {text!r}") from None


def average_by_role(
    records: Iterable[dict[str, Any]],
    roles: dict[str, str],
    window: tuple[int | None, int | None] = (None, None),
) -> dict[str, dict[str, Any]]:
    """Per role: the mean of each exponent over the role's layers and the records in ``window``.

    ``records`` are metrics.jsonl rows; a row's training step is ``step + 1`` (the number of
    updates done when it was logged, as for eval losses) and the window is inclusive on both
    ends. ``roles`` maps parameter names to roles. Returns ``{role: {"alpha": .., "omega": ..,
    "u": .., "n_probes": int, "steps": (first, last)}}`` for the roles that have values, with
    n_probes the number of (layer, probe) alpha values averaged.
    """
    start, end = window
    sums: dict[str, dict[str, list[float]]] = {}
    steps: dict[str, list[int]] = {}
    for rec in records:
        t = rec.get("step", -1) + 1
        if (start is not None and t < start) or (end is not None and t > end):
            continue
        for key, value in rec.items():
            parts = key.split("/", 2)
            if len(parts) != 3 or parts[0] != PREFIX or parts[1] not in EXPONENTS:
                continue
            role = roles.get(parts[2])
            if role is None:
                continue
            sums.setdefault(role, {e: [] for e in EXPONENTS})[parts[1]].append(float(value))
            steps.setdefault(role, []).append(t)
    out = {}
    for role, per_exp in sums.items():
        if not all(per_exp.values()):
            continue
        out[role] = {e: sum(v) / len(v) for e, v in per_exp.items()}
        out[role]["n_probes"] = len(per_exp["alpha"])
        out[role]["steps"] = (min(steps[role]), max(steps[role]))
    return out


def alignment_from_run(
    run_dir: str | Path, window: tuple[int | None, int | None] = (None, None)
) -> tuple[dict[str, dict[str, Any]], Any]:
    """Per-role alignment averaged over ``window`` from a run directory (config.json and
    metrics.jsonl written by `hptransfer train` with ``train.align_every > 0``).

    Returns (per-role averages as in `average_by_role`, the run's RunConfig). Raises
    FileNotFoundError for a missing file and ValueError when the window holds no probes for the
    hidden and output roles.
    """
    from hptransfer.config import from_dict
    from hptransfer.param.roles import roles_from_factory
    from hptransfer.train import model_factory

    run = Path(run_dir)
    for f in ("config.json", "metrics.jsonl"):
        if not (run / f).is_file():
            raise ConfigError(f"{run / f}: not a run directory of `hptransfer train`")
    cfg = from_dict(json.loads((run / "config.json").read_text()))
    p = cfg.param
    table = roles_from_factory(
        model_factory(cfg), cfg.model.width, p.base_width, overrides=p.overrides, tied=p.tied
    )
    roles = {e.name: e.role for e in table}
    with (run / "metrics.jsonl").open() as f:
        records = [json.loads(line) for line in f if line.strip()]
    per_role = average_by_role(records, roles, window)
    missing = sorted({"hidden", "output"} - set(per_role))
    if missing:
        raise ConfigError(
            f"{run}: no alignment probes for {', '.join(missing)} in the window (was the run "
            "trained with train.align_every > 0?)"
        )
    return per_role, cfg
