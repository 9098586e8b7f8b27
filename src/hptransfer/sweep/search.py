"""Adaptive LR search for one (width, setting): [E]'s protocol as a small state machine.

1. Evaluate the starting grid.
2. Extend the grid upward, at the starting grid's own spacing (2^(1/2) for a single starting
   LR), until the highest LR diverges or its loss exceeds ``worse`` (1.2) x the best so far.
3. Extend downward likewise until the optimum is bracketed (the best LR is not the lowest).
   When every LR so far diverged, extend downward too.
4. Refine, by ``refine`` (``[sweep] refine``):

   - ``neighbours``: evaluate both neighbours of the best LR at ``step`` (this fills a coarse
     starting grid in), then at ``fine`` (2^(1/4)); again whenever the best moves, until the
     best LR's neighbours at both spacings are known.
   - ``fit``: successive parabolic interpolation with the package's one optimum estimator
     (`analysis.find_optima`: the quadratic in ln(LR) through the points within one octave of
     the best). The search is done when that fit is local (its points all within the
     estimator's octave of the best, none topped up from the coarse grid) and its vertex's
     ``fine`` lattice point is known, or finite points lie within ``step`` of the vertex on
     both sides: the optimum is then located to about 2^(1/4) from half-octave points, and a
     report gives it with the same estimator. Until then the vertex, rounded to the ``fine``
     lattice of the starting grid, is evaluated next (one LR a round), or when that point is
     known, or the fit has no vertex (fewer than 3
     points, concave, the vertex outside its points), the neighbour of the best at ``step``,
     then ``fine``: on the vertex's side, without a vertex on the side with the wider gap to
     the next known LR (ties: the larger). The neighbour rule trains 4 to 6 LRs within a
     few percent of the best, which halving cannot stop; the fit trains 2 to 4.

Pure Python and deterministic: ``propose()`` looks only at recorded results, so a resumed sweep
proposes the same LRs (and so the same run ids) again. A diverged or failed point is recorded as
``None``. Steps 2 and 3 run side by side, so one round may propose two LRs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from hptransfer.analysis.optimum import WINDOW_OCTAVES, find_optima
from hptransfer.config import DEFAULT_REFINE, Refine
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
    refine: Refine = DEFAULT_REFINE
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
        if self.refine == "fit":
            return self._fit_next(best_lr)
        for spacing in (self.step, self.fine):
            near = self._allowed([best_lr / spacing, best_lr * spacing])
            if near:
                return near
        return []

    def fit(self) -> tuple[float, bool] | None:
        """find_optima's optimum over the finite points and whether its fit is local (every
        point within its window of the best); None when it has no vertex (grid optimum)."""
        best = self.best()
        if best is None:
            return None
        rows = [
            {"width": 0, "lr": lr, "status": "ok", "final_eval_loss": loss}
            for lr, loss in self.results.values()
            if loss is not None
        ]
        row = find_optima(pd.DataFrame(rows), by=(), n_boot=0).iloc[0]
        if not row["interp_ok"]:
            return None
        best_lr = best[0]
        span = 2**WINDOW_OCTAVES * (1 + 1e-9)
        local = row["fit_lr_lo"] * span >= best_lr and row["fit_lr_hi"] <= best_lr * span
        return float(row["lr_interp"]), bool(local)

    def snap(self, lr: float) -> float:
        """The point of the starting grid's ``fine`` lattice nearest ``lr`` (in log)."""
        anchor = min(self.start)
        return round_lr(anchor * self.fine ** round(math.log(lr / anchor, self.fine)))

    def _fit_next(self, best_lr: float) -> list[float]:
        """The ``fit`` refinement's next LR (module docstring, step 4); [] when done."""
        fit = self.fit()
        logs = sorted(math.log2(lr) for lr, _ in self.results.values())
        here = math.log2(best_lr)
        below = here - max((v for v in logs if v < here), default=-math.inf)
        above = min((v for v in logs if v > here), default=math.inf) - here
        up = above >= below  # no vertex: towards the wider gap next to the best
        if fit is not None:
            vertex, local = fit
            if local and self._bracketed(vertex):
                return []
            target = self._allowed([self.snap(vertex)])
            if target:
                return target
            up = vertex >= best_lr
        for spacing in (self.step, self.fine):
            side = [best_lr * spacing, best_lr / spacing]
            near = self._allowed(side if up else side[::-1])
            if near:
                return near[:1]
        return []

    def _bracketed(self, lr: float) -> bool:
        """Whether finite points lie on both sides of ``lr`` within ``step`` of it; a point at
        its ``fine`` lattice point (``snap``) stands on both sides."""
        finite = [x for x, loss in self.results.values() if loss is not None]
        if _key(self.snap(lr)) in {_key(x) for x in finite}:
            return True
        reach = math.log2(self.step) + 1e-6
        gaps = [math.log2(x / lr) for x in finite]
        return any(-reach <= g <= 0 for g in gaps) and any(0 <= g <= reach for g in gaps)

    def _allowed(self, lrs: list[float]) -> list[float]:
        out: list[float] = []
        for lr in (round_lr(v) for v in lrs):
            if self.bounds[0] <= lr <= self.bounds[1] and not self.known(lr) and lr not in out:
                out.append(lr)
        return out[: max(0, self.max_points - len(self.results))] if self.results else out
