"""Adaptive LR search for one (width, setting): [E]'s protocol as a small state machine.

1. Evaluate the starting grid.
2. Extend the grid upward, at the starting grid's own spacing (2^(1/2) for a single starting
   LR), until the highest LR diverges or its loss exceeds ``worse`` (1.2) x the best so far.
3. Extend downward likewise until the optimum is bracketed (the best LR is not the lowest).
   When every LR so far diverged, extend downward too.
4. Refine: evaluate both neighbours of the best LR at ``step`` (this fills a coarse starting
   grid in), then at ``fine`` (2^(1/4)); again whenever the best moves, until the best LR's
   neighbours at both spacings are known.

Pure Python and deterministic: ``propose()`` looks only at recorded results, so a resumed sweep
proposes the same LRs (and so the same run ids) again. A diverged or failed point is recorded as
``None``. Steps 2 and 3 run side by side, so one round may propose two LRs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hptransfer.sweep.spec import round_lr


def _key(lr: float) -> float:
    return round(math.log2(lr), 6)


@dataclass
class LRSearch:
    """Search state of one (width, setting); LRs are positive floats, losses nats or None."""

    start: list[float]
    step: float = 2**0.5
    """Refinement spacing, coarse; also the extension spacing when the start has one LR."""
    fine: float = 2**0.25
    worse: float = 1.2
    bounds: tuple[float, float] = (1e-8, 1e3)
    """LRs outside these are never proposed."""
    max_points: int = 40
    """The search stops after this many LRs, bracketed or not."""
    results: dict[float, tuple[float, float | None]] = field(default_factory=dict)
    """log2-rounded key -> (lr, loss or None when diverged / failed)."""

    @property
    def extend_step(self) -> float:
        """The starting grid's smallest spacing (``step`` for a single starting LR): a plateau
        of non-diverging large LRs is crossed in the grid's strides, not in 2^(1/2) steps."""
        lrs = sorted(set(self.start))
        ratios = [b / a for a, b in zip(lrs, lrs[1:])]
        return max(self.step, min(ratios)) if ratios else self.step

    def record(self, lr: float, loss: float | None) -> None:
        """Store the (seed-averaged) loss at ``lr``; None or non-finite means diverged."""
        if loss is not None and not math.isfinite(loss):
            loss = None
        self.results[_key(lr)] = (lr, loss)

    def known(self, lr: float) -> bool:
        return _key(lr) in self.results

    def best(self) -> tuple[float, float] | None:
        """(lr, loss) of the lowest finite loss so far (the smaller LR on ties)."""
        finite = [(loss, lr) for lr, loss in self.results.values() if loss is not None]
        if not finite:
            return None
        loss, lr = min(finite)
        return lr, loss

    def propose(self) -> list[float]:
        """LRs to evaluate next (none known yet); an empty list means the search is done."""
        todo = [lr for lr in self.start if not self.known(lr)]
        if todo or len(self.results) >= self.max_points:
            return self._allowed(todo)
        points = sorted(self.results.values())
        (lo, _), (hi, hi_loss) = points[0], points[-1]
        best = self.best()
        stride = self.extend_step
        if best is None:  # everything diverged: the LRs are too large
            return self._allowed([lo / stride])
        best_lr, best_loss = best
        extend = []
        if hi_loss is not None and hi_loss <= self.worse * best_loss:
            extend.append(hi * stride)
        if _key(best_lr) == _key(lo):
            extend.append(lo / stride)
        extend = self._allowed(extend)
        if extend:
            return extend
        for spacing in (self.step, self.fine):
            near = self._allowed([best_lr / spacing, best_lr * spacing])
            if near:
                return near
        return []

    def _allowed(self, lrs: list[float]) -> list[float]:
        out: list[float] = []
        for lr in (round_lr(v) for v in lrs):
            if self.bounds[0] <= lr <= self.bounds[1] and not self.known(lr) and lr not in out:
                out.append(lr)
        return out[: max(0, self.max_points - len(self.results))] if self.results else out
