"""A stored run's alignment exponents averaged per role, for the "measured" alignment preset.

`hptransfer train` with ``train.align_every > 0`` logs ``align/<exponent>/<weight name>`` every
``align_every`` steps (`hptransfer.probes.alignment`). Here those records are read back from
the run directory, each weight is given its role (the roles are rebuilt from the run's config,
so this module imports torch, unlike the rest of `analysis`), and alpha, omega and u are
averaged per role over a window of steps: the values ``param.alignment_values`` takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hptransfer import store
from hptransfer.assemble import model_factory
from hptransfer.config import RunConfig, from_dict
from hptransfer.errors import ConfigError
from hptransfer.param.roles import roles_from_factory
from hptransfer.probes.alignment import EXPONENTS, PREFIX


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
    out: dict[str, dict[str, Any]] = {}
    for role, per_exp in sums.items():
        if not all(per_exp.values()):
            continue
        out[role] = {e: sum(v) / len(v) for e, v in per_exp.items()}
        out[role]["n_probes"] = len(per_exp["alpha"])
        out[role]["steps"] = (min(steps[role]), max(steps[role]))
    return out


def alignment_from_run(
    run_dir: str | Path, window: tuple[int | None, int | None] = (None, None)
) -> tuple[dict[str, dict[str, Any]], RunConfig]:
    """Per-role alignment averaged over ``window`` from a run directory (config.json and
    metrics.jsonl written by `hptransfer train` with ``train.align_every > 0``).

    Returns (per-role averages as in `average_by_role`, the run's RunConfig). Raises
    ConfigError for a missing file and when the window holds no probes for the hidden and
    output roles.
    """
    run = Path(run_dir)
    for f in (store.CONFIG, store.METRICS):
        if not (run / f).is_file():
            raise ConfigError(f"{run / f}: not a run directory of `hptransfer train`")
    cfg = from_dict(store.read_json(run / store.CONFIG))
    p = cfg.param
    table = roles_from_factory(
        model_factory(cfg), cfg.model.width, p.base_width, overrides=p.overrides, tied=p.tied
    )
    roles = {e.name: e.role for e in table}
    per_role = average_by_role(store.read_metrics(run), roles, window)
    missing = sorted({"hidden", "output"} - set(per_role))
    if missing:
        raise ConfigError(
            f"{run}: no alignment probes for {', '.join(missing)} in the window (was the run "
            "trained with train.align_every > 0?)"
        )
    return per_role, cfg
