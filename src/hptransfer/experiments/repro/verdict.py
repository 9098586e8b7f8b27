"""A reproduction's verdict from its numbers: each part of the claim is checked on its seed
interval, and the parts decide the word.

A claim is a list of :class:`Finding`: one checkable statement each ("sp global LR drifts",
"sp+embd has a lower loss than sp at width 128"), with the number behind it and its interval
over seeds. A finding *holds* when the whole interval lies on the claimed side of its
threshold, *fails* when the whole interval lies on the other side, and is *unresolved*
otherwise (the interval straddles the threshold, or there is no interval: one seed). A finding
that reads an optimum at the edge of the LR window (not bracketed: the true optimum lies
beyond it, so the drift, the penalty and the loss there are bounds, not values) is unresolved
too, whatever its interval, and says where: a wider window resolves it. Then

    all hold                   -> "reproduced"
    some hold                  -> "partly reproduced (what and what not)"
    none holds                 -> "not reproduced at this scale (why)"

The checks read the records of experiments.repro.transfer (``drift_per_doubling`` and its
``_lo`` / ``_hi``, the same for ``transfer_penalty_pct``) and the loss gaps of
analysis.transfer's :meth:`~hptransfer.analysis.transfer.Transfer.loss_gap`; the thresholds are
the verdict's own (MAX_DRIFT, MAX_PENALTY_PCT).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hptransfer.analysis.transfer import MAX_DRIFT, MAX_PENALTY_PCT

Setting = dict[str, Any]
"""A setting's record of numbers (experiments.repro.transfer's records)."""

if TYPE_CHECKING:
    from hptransfer.analysis.transfer import Transfer

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
NOT_REPRODUCED = "not reproduced at this scale"


@dataclass(frozen=True)
class Finding:
    """One checkable part of a claim, with the numbers it was decided on."""

    what: str
    holds: bool | None
    """True: the whole seed interval is on the claimed side; False: on the other side; None:
    unresolved (the interval straddles the threshold, or one seed gives no interval)."""
    numbers: str

    @property
    def state(self) -> str:
        return {True: "holds", False: "fails", None: "unresolved"}[self.holds]


def interval(point: float | None, lo: float | None, hi: float | None, digits: int = 2) -> str:
    """``point [lo, hi]``, or ``point (one seed)`` without an interval."""
    if point is None or not math.isfinite(point):
        return "n/a"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{point:+.{digits}f} (one seed)"
    return f"{point:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _side(lo: float | None, hi: float | None, low: float, high: float) -> bool | None:
    """True when [lo, hi] lies inside [low, high], False when it lies wholly outside it, None
    when it straddles an end or is missing."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    if low <= lo and hi <= high:
        return True
    if hi < low or lo > high:
        return False
    return None


def _get(rec: Setting, key: str) -> tuple[float | None, float | None, float | None]:
    return rec.get(key), rec.get(f"{key}_lo"), rec.get(f"{key}_hi")


def transfers(rec: Setting) -> Finding:
    """The setting's optimum transfers: every seed's |drift| <= MAX_DRIFT and every seed's
    transfer penalty <= MAX_PENALTY_PCT; fails when every seed's drift or every seed's penalty
    is beyond its threshold; unresolved otherwise and wherever an optimum is unbracketed."""
    drift = _side(*_get(rec, "drift_per_doubling")[1:], -MAX_DRIFT, MAX_DRIFT)
    penalty = _side(*_get(rec, "transfer_penalty_pct")[1:], -math.inf, MAX_PENALTY_PCT)
    holds = (
        True if drift is True and penalty is True
        else False if drift is False or penalty is False
        else None
    )  # fmt: skip
    return _bracketed(Finding(f"{rec['setting']} transfers", holds, _numbers(rec)), rec)


def drifts(rec: Setting) -> Finding:
    """The setting's optimum does not transfer (the negation of :func:`transfers`)."""
    found = transfers(rec)
    holds = None if found.holds is None else not found.holds
    return Finding(f"{rec['setting']} drifts", holds, found.numbers)


def edges(rec: Setting, width: int | None = None) -> str:
    """Where the setting's optimum sits at the edge of the LR window (at ``width`` only, when
    given), e.g. ``128 (seed mean; seeds 0, 2)``; empty when it is bracketed everywhere."""
    mean = [int(w) for w in rec.get("mean_edges", ())]
    seeds: dict[int, list[int]] = {}
    for w, seed in rec.get("seed_edges", ()):
        seeds.setdefault(int(w), []).append(int(seed))
    parts = []
    for w in sorted(set(mean) | set(seeds)):
        if width is not None and w != width:
            continue
        who = (["seed mean"] if w in mean else []) + (
            [f"seed{'s' if len(seeds[w]) > 1 else ''} {', '.join(map(str, seeds[w]))}"]
            if w in seeds else []
        )  # fmt: skip
        parts.append(f"{w} ({'; '.join(who)})")
    return ", ".join(parts)


def _bracketed(found: Finding, *recs: Setting, width: int | None = None) -> Finding:
    """``found``, unresolved when an optimum it reads (of ``recs``, at ``width`` when given)
    is at the edge of the LR window, with where in its numbers."""
    where = [f"{r['setting']} at {e}" for r in recs if (e := edges(r, width))]
    if not where:
        return found
    note = f"; optimum at the window edge: {'; '.join(where)}"
    return Finding(found.what, None, found.numbers + note)


def _numbers(rec: Setting) -> str:
    return (
        f"drift {interval(*_get(rec, 'drift_per_doubling'))}, "
        f"penalty % {interval(*_get(rec, 'transfer_penalty_pct'))}"
    )


def lower_loss(transfer: Transfer, a: Setting, b: Setting, width: int) -> Finding:
    """Setting ``a`` reaches a lower loss than ``b`` at ``width``: the gap a - b at the
    optima (:meth:`Transfer.loss_gap`, paired by seed) below 0 for every seed."""
    point, lo, hi = transfer.loss_gap(a, b, width)
    holds = _side(lo, hi, -math.inf, 0.0)
    if holds is True and hi == 0.0:
        holds = None
    found = Finding(f"{a['setting']} has a lower loss than {b['setting']} at {width}", holds,
                    f"gap (nats) {interval(point, lo, hi, 3)}")  # fmt: skip
    # an unbracketed optimum's loss bounds the true one from above: b's can undo a gap that
    # holds, a's one that fails
    return _bracketed(found, *{True: (b,), False: (a,), None: (a, b)}[holds], width=width)


def negative(what: str, point: float | None, lo: float | None, hi: float | None,
             digits: int = 2) -> Finding:  # fmt: skip
    """``what``: a number (a slope, a gap) is below 0 for every seed: holds when its seed
    interval [lo, hi] lies below 0, fails when it lies above, unresolved otherwise."""
    holds = _side(lo, hi, -math.inf, 0.0)
    if holds is True and hi == 0.0:
        holds = None
    return Finding(what, holds, interval(point, lo, hi, digits))


def smaller(
    what: str, point: tuple[float, float], pairs: Sequence[tuple[float, float]],
    absolute: bool = False, digits: int = 2,
) -> Finding:  # fmt: skip
    """``what``: a number of one setting is below the same number of another, for every seed.
    ``point``: (a, b) from the seed-mean fits; ``pairs``: (a, b) of each seed (see
    :func:`paired`); ``absolute`` compares |a| and |b| (a drift that is smaller either way).
    Fails when a is above b for every seed; one seed gives no interval (unresolved)."""
    size = abs if absolute else (lambda v: v)
    diffs = [size(a) - size(b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    holds: bool | None = None
    lo = hi = None
    if len(diffs) > 1:
        lo, hi = min(diffs), max(diffs)
        holds = True if hi < 0 else False if lo > 0 else None
    a, b = point
    gap = size(a) - size(b) if a is not None and b is not None else None
    name = "abs(a) - abs(b)" if absolute else "a - b"
    return Finding(what, holds, f"{name} {interval(gap, lo, hi, digits)}")


def paired(transfer: Transfer, a: Setting, b: Setting, metric: str) -> list[tuple[float, float]]:
    """(``metric`` of setting a, of setting b) for each seed, from the verdict's per-seed
    fits (empty with one seed)."""
    from hptransfer.analysis.transfer import setting_rows

    if transfer.per_seed is None:
        return []
    rows = [setting_rows(transfer.per_seed, {c: rec[c] for c in transfer.by})
            .set_index("seed")[metric] for rec in (a, b)]  # fmt: skip
    both = rows[0].to_frame("a").join(rows[1].to_frame("b"), how="inner")
    return [(float(x), float(y)) for x, y in zip(both["a"], both["b"])]


def less_drift(transfer: Transfer, a: Setting, b: Setting) -> Finding:
    """Setting a's optimum moves less than b's: |drift_a| < |drift_b| for every seed, both
    bracketed."""
    found = smaller(
        f"{a['setting']} drifts less than {b['setting']}",
        (a["drift_per_doubling"], b["drift_per_doubling"]),
        paired(transfer, a, b, "drift_per_doubling"), absolute=True,
    )  # fmt: skip
    return _bracketed(found, a, b)


def fit_smaller(
    transfer: Transfer, a: Setting, b: Setting, metric: str, digits: int = 2
) -> Finding:
    """Setting a's ``metric`` (read from the optima at every x, as [K]'s E and kappa) is below
    b's for every seed, both settings bracketed at every x."""
    what = f"{metric} of {a['setting']} below {metric} of {b['setting']}"
    found = smaller(what, (a[metric], b[metric]), paired(transfer, a, b, metric), digits=digits)
    return _bracketed(found, a, b)


def find(records: Sequence[Setting], **values: object) -> Setting:
    """The record whose by-values include ``values`` (keys with dots spelt with __)."""
    want = {k.replace("__", "."): v for k, v in values.items()}
    for rec in records:
        if all(rec.get(k) == v for k, v in want.items()):
            return rec
    raise KeyError(f"no setting with {want}")


def word(findings: Sequence[Finding]) -> str:
    """The verdict of a claim from its findings (see the module docstring)."""
    held = [f.what for f in findings if f.holds is True]
    missed = [f"{f.what} ({'the opposite holds' if f.holds is False else 'unresolved'})"
              for f in findings if f.holds is not True]  # fmt: skip
    if not findings:
        return f"{NOT_REPRODUCED} (nothing measured)"
    if not missed:
        return REPRODUCED
    if not held:
        return f"{NOT_REPRODUCED} ({'; '.join(missed)})"
    return f"{PARTLY} (reproduced: {'; '.join(held)}; not: {'; '.join(missed)})"


def verdict_lines(findings: Sequence[Finding]) -> list[str]:
    """The findings as a Markdown table and the verdict line under it."""
    return [
        "| claim part | numbers [min, max over seeds] | |",
        "|---|---|---|",
        *(f"| {f.what} | {f.numbers} | {f.state} |" for f in findings),
        "",
        f"verdict: {word(findings)}",
    ]
