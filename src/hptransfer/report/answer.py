"""The report's last word: the base LR to use at a larger width, per setting, and the setting
the data recommend.

The numbers are those of ``hptransfer predict DIR --width N`` (`analysis.predict.predict_lr` and
`recommend`, with their defaults: 200 bootstrap replicates, a 90% interval); N is the report's
``target_width``, by default TARGET_FACTOR x the largest swept width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hptransfer.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

TARGET_FACTOR = 8
"""Default target: this many times the largest swept width."""


def default_target(runs: pd.DataFrame) -> int | None:
    """TARGET_FACTOR x the largest swept width (None without runs)."""
    return int(TARGET_FACTOR * runs["width"].max()) if len(runs) else None


def answer(runs: pd.DataFrame, by: Sequence[str], target_width: int | None) -> dict[str, Any]:
    """The prediction at ``target_width`` (default: `default_target`) as plain data.

    Returns {"width", "level", "settings": predict_lr's rows (warnings as lists),
    "recommended": {"setting", "reason"}} or, where the sweep cannot support a prediction
    (one width, no converged run), {"width", "unavailable": reason}. Raises ConfigError when an
    explicit ``target_width`` lies below the smallest swept width (bad input, not a property
    of the sweep).
    """
    from hptransfer.analysis.predict import LEVEL, predict_lr, recommend
    from hptransfer.analysis.transfer import records

    if target_width is not None and target_width < 1:
        raise ConfigError(f"--target-width must be a positive width, got {target_width}")
    if target_width is not None and len(runs) and target_width < runs["width"].min():
        raise ConfigError(
            f"--target-width {target_width} lies below the swept widths "
            f"({int(runs['width'].min())} to {int(runs['width'].max())})"
        )
    width = target_width if target_width is not None else default_target(runs)
    if width is None:
        return {"width": None, "unavailable": "no finished runs"}
    try:
        pred = predict_lr(runs, width, list(by))
    except ConfigError as e:
        return {"width": width, "unavailable": str(e)}
    best, why = recommend(pred)
    rows = records(pred)
    for row in rows:
        row["warnings"] = list(row["warnings"])
    label = None if best is None else str(pred.loc[best, "label"])
    return {
        "width": width,
        "level": LEVEL,
        "settings": rows,
        "recommended": {"setting": label, "reason": why},
    }
