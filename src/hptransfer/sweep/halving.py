"""Successive halving inside an LR search: stop a point whose loss is hopeless early.

The ``[halving]`` table of a sweep spec turns it on (ASHA's rungs, a margin instead of a quota)::

    [halving]
    eta = 3         # rungs at the fractions eta^-rungs, ..., eta^-1 of train.steps
    rungs = 2       # so 1/9 and 1/3 of the run by default
    margin = 0.1    # stop when loss > (1 + margin) x the best loss at that step

A rung is the first evaluation (``train.eval_every``) at or after its fraction of the run, and
before its last step: a run evaluated only at its end is never stopped. At a rung, a run's eval
loss L is compared with the eval losses at the same step of the runs before it in its group
(the same (width, setting) LR search and seed, in the order the search proposed them):

    stop  iff  L > (1 + margin) * min(theirs)

ASHA's quota (promote the best 1/eta at each rung) is not used: it stops points by rank, and so
stops the eventual optimum whenever learning curves cross (a large LR leads early, a smaller
one wins at the end). A margin stops only points far behind the best curve so far.

Determinism: a run waits at a rung for the runs before it in its group that are running now,
until they log that step or finish (`wait_for`). Runs of one search are submitted in proposal
order, so the runs before a run are finished or running, and the decision depends only on the
learning curves, never on timing: a halving sweep equals its replay from a dense grid's curves
(benchmarks/bench_halving.py replays with `stop_step`). A sibling that is neither finished nor
running (after a crash, or in a resume) is not waited for.

A stopped run is recorded with status "stopped" (train losses so far, its last eval loss, no
final loss); a resumed sweep skips it like any finished run, and analysis never reads its loss
as a final loss. Its search records the LR as no better than the best (like a diverged LR).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hptransfer import store
from hptransfer.config import ConfigError, check_fields

WAIT_POLL_S = 0.2
"""How often a run at a rung looks again at a sibling that has not reached it."""
GRACE_S = 60.0
"""How long a run waits for a sibling that holds no live lock (a worker starting up)."""


@dataclass(frozen=True)
class Halving:
    """The ``[halving]`` table: where to compare (rungs) and how far behind is hopeless."""

    eta: int = 3
    """Rungs sit at fractions eta^-k of the run, k = rungs, ..., 1."""
    rungs: int = 2
    margin: float = 0.1
    """Stop when a rung's eval loss exceeds (1 + margin) x the best sibling's at that step."""

    def __post_init__(self) -> None:
        check_fields(self, "halving.")
        if self.eta < 2:
            raise ConfigError(f"halving.eta must be >= 2, got {self.eta}")
        if self.rungs < 1:
            raise ConfigError(f"halving.rungs must be >= 1, got {self.rungs}")
        if not 0 <= self.margin < math.inf:
            raise ConfigError(f"halving.margin must be a finite number >= 0, got {self.margin}")

    def rung_steps(self, steps: int, eval_every: int) -> list[int]:
        """The eval steps (1-based step counts) where a run of ``steps`` steps is compared."""
        out: list[int] = []
        for k in range(self.rungs, 0, -1):
            at = math.ceil(steps * self.eta**-k / eval_every) * eval_every
            if 0 < at < steps and at not in out:
                out.append(at)
        return out

    def stops(self, loss: float, theirs: Sequence[float]) -> bool:
        """Whether a run with eval ``loss`` at a rung stops, given its siblings' losses there."""
        finite = [v for v in theirs if math.isfinite(v)]
        return bool(finite) and loss > (1 + self.margin) * min(finite)


def stop_step(
    rule: Halving, rungs: Sequence[int], curve: dict[int, float], before: Sequence[dict[int, float]]
) -> int | None:
    """The rung at which a run with eval losses ``curve`` (step -> loss) stops, given the
    curves of the runs before it in its group (each cut where that run ended); None when it
    runs to the end. The replay of a sweep from stored curves."""
    for at in rungs:
        if at not in curve:
            return None  # ended (diverged) before this rung
        theirs = [c[at] for c in before if at in c]
        if rule.stops(curve[at], theirs):
            return at
    return None


def eval_curve(directory: str | Path) -> dict[int, float]:
    """A run's eval losses by step count (1-based), from its metrics.jsonl."""
    return {
        int(r["step"]) + 1: float(r["eval_loss"])
        for r in store.read_metrics(directory)
        if r.get("eval_loss") is not None
    }


class Stopped(Exception):
    """Raised from the trainer's progress hook to stop a run at a rung."""

    def __init__(self, step: int, loss: float, best: float) -> None:
        super().__init__(f"stopped at step {step}: eval loss {loss:.4g} > best {best:.4g}")
        self.step, self.loss = step, loss


@dataclass
class Hook:
    """The trainer's progress hook of one run under halving (see the module docstring):
    collects its train losses, and at each rung waits for the siblings and raises `Stopped`."""

    rule: Halving
    rungs: list[int]
    root: Path
    siblings: list[str]
    lock_timeout_s: float = store.LOCK_TIMEOUT_S
    losses: list[float] = field(default_factory=list)
    last_eval: float | None = None
    sleep: Callable[[float], None] = time.sleep

    def __call__(self, record: dict[str, Any]) -> None:
        self.losses.append(float(record["loss"]))
        if record.get("eval_loss") is None:
            return
        self.last_eval = float(record["eval_loss"])
        at = int(record["step"]) + 1
        if at in self.rungs:
            theirs = [v for sib in self.siblings if (v := self.wait_for(sib, at)) is not None]
            if self.rule.stops(self.last_eval, theirs):
                raise Stopped(at, self.last_eval, min(theirs))

    def wait_for(self, run_id: str, at: int) -> float | None:
        """A sibling's eval loss at step ``at``: waits while it runs and has not logged it;
        None when it ended before (stopped, diverged, failed) or is not running."""
        directory = store.run_dir(self.root, run_id)
        waited = 0.0
        while True:
            finished = store.finished_status(self.root, run_id) is not None
            curve = eval_curve(directory) if (directory / store.METRICS).exists() else {}
            if at in curve or finished:
                return curve.get(at)
            live = store.lock_state(directory, self.lock_timeout_s) == "live"
            if not live and waited >= GRACE_S:
                return None
            self.sleep(WAIT_POLL_S)
            waited += WAIT_POLL_S
