"""run_sweep(spec, dir): schedule a sweep's runs on an executor, resumably.

The runner keeps at most ``workers`` runs in flight, starting the costliest pending run first
(`run_cost`; ties in the order they were queued). Before submitting a run it looks at the
store: a finished run (ok / diverged / failed) is skipped and counted. With ``adaptive = true``
each (width, setting) owns an :class:`LRSearch`; when all of a search's runs (every seed of
every LR proposed so far) are finished, its seed-averaged losses are recorded and the next LRs
are queued; a seed that diverged makes its LR count as diverged, and a failed run stops its
search (a failure says nothing about the LR). Because proposals depend only on results, a
resumed sweep re-creates the same runs and skips the finished ones. With ``[halving]`` each run
is told the runs before it in its group (search and seed, in the order they were queued), which
its worker compares it with at each rung (halving.py); a stopped LR counts as no better than the
best, and a stopped run stays stopped on resume.

The disk is the truth. A worker that died is charged to the one run it held, unless that run's
summary shows it finished before the death; a run recorded as failed here is one whose failed
summary was written; ``sweep.json`` is derived from the run directories at the end. With
``retry_failed`` a resume runs the runs recorded as failed once more. A full disk (a worker's or
the runner's write failing with ENOSPC) stops the sweep: no new run starts, the runs in flight
end, and a one-line ConfigError names the path; the runs it stopped are left pending.
"""

from __future__ import annotations

import heapq
import math
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hptransfer import locks, store
from hptransfer.config import ConfigError
from hptransfer.sweep.executors import Executor, check_executor, make_executor
from hptransfer.sweep.preflight import check_runs
from hptransfer.sweep.progress import Counts, Progress
from hptransfer.sweep.search import LRSearch
from hptransfer.sweep.spec import LR_KEY, Run, SweepSpec, parse_cases, parse_grid, parse_step
from hptransfer.sweep.worker import (
    NO_SPACE,
    RunTask,
    no_space_message,
    record_failure,
    train_function,
)

SWEEP_JSON_EVERY_S = 2.0


def prepare_dir(path: str | Path) -> Path:
    """Create the results directory; ConfigError (nothing written) when it is not writable."""
    root = Path(path)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
        (root / "runs").mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write results to {root}: {e.strerror or e}") from None
    return root


EXECUTION_SETTINGS = ("executor", "workers", "address", "retries", "lock_timeout_s")
"""[sweep] keys that say how a sweep runs, not what it computes: a resume may change them."""


def check_same_spec(root: Path, spec: SweepSpec, spec_copy: str = "sweep.toml") -> str | None:
    """Refuse to run ``spec`` into a results directory that holds another spec's results
    (the copy ``root/spec_copy`` it keeps of its spec); return a note when ``spec`` widens it.

    Two specs are the same when their TOML tables are, comments, layout and the
    `EXECUTION_SETTINGS` aside; the same spec resumes. A spec that only adds learning rates to
    the stored one's LR lists (every stored run keeps its id) resumes too: its finished runs
    are kept and the added LRs run.
    """
    copy = root / spec_copy
    if not spec.text or not copy.is_file():
        return None
    try:
        old, new = _what(copy.read_text()), _what(spec.text)
        if old == new:
            return None
        widened = _adds_lrs_only(old, new)
    except (OSError, ValueError):  # an unreadable copy, or a stored grid that no longer parses
        widened = False
    if not widened:
        raise ConfigError(
            f"{root} holds the results of another sweep spec ({copy}); choose another output "
            "directory, or run that spec (or one that only adds learning rates) to resume it"
        )
    return f"{copy}: this spec adds learning rates to the stored one; its finished runs are kept"


def _what(text: str) -> dict[str, Any]:
    table = tomllib.loads(text)
    sweep = table.get("sweep")
    if isinstance(sweep, dict):
        table["sweep"] = {k: v for k, v in sweep.items() if k not in EXECUTION_SETTINGS}
    return table


def _adds_lrs_only(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new`` is ``old`` with learning rates added: the same tables, grid and cases
    but for the LRs, and each case's LRs (its own list, else the grid's) a superset of old's."""
    rest = [{k: v for k, v in t.items() if k not in ("grid", "cases")} for t in (old, new)]
    if rest[0] != rest[1] or len(old.get("cases") or [{}]) != len(new.get("cases") or [{}]):
        return False
    old_grid, new_grid = parse_grid(old.get("grid", {})), parse_grid(new.get("grid", {}))
    if {k: v for k, v in old_grid.items() if k != LR_KEY} != {
        k: v for k, v in new_grid.items() if k != LR_KEY
    }:
        return False
    cases = zip(parse_cases(old.get("cases"), old_grid), parse_cases(new.get("cases"), new_grid))
    for a, b in cases:
        a_lrs, b_lrs = a.pop(LR_KEY, old_grid.get(LR_KEY)), b.pop(LR_KEY, new_grid.get(LR_KEY))
        if a != b or not set(a_lrs or ()) <= set(b_lrs or ()):
            return False
    return True


def run_cost(run: Run) -> float:
    """A run's rough cost (tokens x width^2 x depth): the runner starts the costliest pending
    run first, so long runs (and the long chains of an adaptive search at the widest width) do
    not leave workers idle at the end of a sweep."""
    m, t = run.config.model, run.config.train
    return float(t.steps) * t.batch_size * t.seq_len * m.width**2 * m.depth


def outcome_of(root: Path, run_id: str) -> dict[str, Any]:
    """The outcome record of a finished run, read from its summary."""
    summary = store.read_json(store.run_dir(root, run_id) / "summary.json")
    keys = ("status", "final_eval_loss", "best_eval_loss", "steps", "wall_time_s")
    return {"run_id": run_id, "skipped": True, **{k: summary.get(k) for k in keys}}


@dataclass
class _Search:
    """One adaptive search: its state, one template run per seed, its runs so far."""

    search: LRSearch
    templates: list[Run]
    run_ids: list[str] = field(default_factory=list)


def halving_order(runs: list[Run], group_of: Callable[[Run], Hashable]) -> list[Run]:
    """Runs ordered for successive halving: in each group, the middle of its LR range (in
    log2) first, then outward, the larger LR first at equal distance. Halving compares a run
    with the ones before it, so the likeliest optima (the middle of the grid, a guess) should
    go first, and at equal distance the large LR, which learns faster early: the small LRs
    that are hopeless are then behind at the first rung and stopped there."""
    logs: dict[Hashable, list[float]] = {}
    for run in runs:
        logs.setdefault(group_of(run), []).append(math.log2(run.config.optimizer.lr))
    middle = {g: (min(v) + max(v)) / 2 for g, v in logs.items()}

    def place(run: Run) -> tuple[float, float]:
        log_lr = math.log2(run.config.optimizer.lr)
        return round(abs(log_lr - middle[group_of(run)]), 6), -log_lr

    return sorted(runs, key=place)


class SweepRunner:
    """The scheduling loop of one sweep (see the module docstring)."""

    def __init__(
        self, spec: SweepSpec, root: Path, executor: Executor, progress: Progress,
        runs: list[Run] | None = None, retry_failed: bool = False,
    ) -> None:  # fmt: skip
        self.spec, self.root, self.executor, self.progress = spec, root, executor, progress
        self.retry_failed = retry_failed
        self.rerun: set[str] = set()
        """Failed runs resubmitted by this sweep (each once)."""
        self.no_space: str | None = None
        """Set when a write failed for lack of space: start nothing more."""
        self.initial = runs if runs is not None else spec.expand()
        self.runs: dict[str, Run] = {}
        self.status: dict[str, str] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.queue: list[tuple[float, int, Run]] = []  # a heap: costliest first, then FIFO
        self._queued = 0
        self.attempts: Counter[str] = Counter()
        self.searches: dict[tuple, _Search] = {}
        self.search_of: dict[str, tuple] = {}
        self.groups: dict[tuple, list[str]] = {}
        """Halving groups: (setting, seed) -> run ids in the order they were queued."""
        self.counts = Counts()
        self.train_fn = train_function()
        self._written = 0.0

    def add(self, run: Run, key: tuple | None = None) -> None:
        if run.run_id in self.runs:
            return
        self.runs[run.run_id] = run
        self.status[run.run_id] = "pending"
        self.groups.setdefault(self._group(run), []).append(run.run_id)
        self._push(run)
        self.counts.pending += 1
        if key is not None:
            self.search_of[run.run_id] = key
            self.searches[key].run_ids.append(run.run_id)

    def plan(self) -> None:
        """Queue the expanded grid; with adaptive search, group it into searches. Under halving
        each group's LRs go middle-out (`halving_order`)."""
        if self.spec.halving is not None:
            self.initial = halving_order(self.initial, self._group)
        starts: dict[tuple, list[float]] = {}  # each search starts from its own LR list
        if self.spec.settings.adaptive:
            for run in self.initial:
                lrs = starts.setdefault(self.spec.settings_key(run), [])
                if run.values[LR_KEY] not in lrs:
                    lrs.append(run.values[LR_KEY])
        for run in self.initial:
            key = None
            if self.spec.settings.adaptive:
                key = self.spec.settings_key(run)
                if key not in self.searches:
                    fine = parse_step(self.spec.settings.lr_refine)
                    search = LRSearch(starts[key], fine=fine, refine=self.spec.settings.refine)
                    self.searches[key] = _Search(search, [])
                if run.values[LR_KEY] == starts[key][0]:
                    self.searches[key].templates.append(run)
            self.add(run, key)

    def _group(self, run: Run) -> tuple:
        """A run's halving group: its LR search's setting and its seed."""
        return self.spec.settings_key(run), run.config.seed

    def _push(self, run: Run) -> None:
        heapq.heappush(self.queue, (-run_cost(run), self._queued, run))
        self._queued += 1

    def task(self, run: Run) -> RunTask:
        halving = siblings = None
        if self.spec.halving is not None:
            halving = asdict(self.spec.halving)
            group = self.groups[self._group(run)]
            siblings = tuple(group[: group.index(run.run_id)])
        return RunTask(
            root=str(self.root), run_id=run.run_id, config=run.config.to_dict(),
            train_fn=self.train_fn, threads=self.spec.settings.threads_per_run,
            lock_timeout_s=self.spec.settings.lock_timeout_s,
            rerun_failed=run.run_id in self.rerun, halving=halving, siblings=siblings or (),
        )  # fmt: skip

    def skips(self, run_id: str) -> bool:
        """Whether a run is finished on disk and not a failure this sweep is to run again."""
        status = store.finished_status(self.root, run_id)
        if status == "failed" and self.retry_failed and run_id not in self.rerun:
            return False
        return status is not None

    def execute(self) -> Counts:
        self.plan()
        before = sum(self.skips(rid) for rid in self.runs)
        if before:
            self.progress.message(f"skipping {before} finished run(s) in {self.root}")
        self.counts.to_skip = before
        in_flight = 0
        while (self.queue and not self.no_space) or in_flight:
            while self.queue and in_flight < self.executor.workers and not self.no_space:
                run = heapq.heappop(self.queue)[2]
                if self.skips(run.run_id):
                    self._clear_stale_lock(run)
                    self.handle(run, outcome_of(self.root, run.run_id))
                    continue
                if store.finished_status(self.root, run.run_id) == "failed":
                    self.rerun.add(run.run_id)
                self.executor.submit(self.task(run))
                self._move(run.run_id, "running")
                in_flight += 1
            for task, outcome in self.executor.wait(timeout=1.0):
                in_flight -= 1
                self.handle(self.runs[task.run_id], outcome)
            self.progress.show(self.counts)
            self.write_listing()
        self.write_listing(force=True)
        self.progress.close(self.counts)
        if self.no_space:
            raise ConfigError(f"{self.no_space}; free some space and run the sweep again")
        return self.counts

    def _clear_stale_lock(self, run: Run) -> None:
        directory = store.run_dir(self.root, run.run_id)
        locks.clear_stale_lock(directory, self.spec.settings.lock_timeout_s)

    def _move(self, run_id: str, status: str) -> None:
        for old_or_new, delta in ((self.status[run_id], -1), (status, 1)):
            if old_or_new in ("pending", "running"):
                setattr(self.counts, old_or_new, getattr(self.counts, old_or_new) + delta)
        self.status[run_id] = status

    def handle(self, run: Run, outcome: dict[str, Any]) -> None:
        """Record a run's outcome; retry crashed workers; advance its search."""
        status = outcome.get("status")
        if status == "no_space":
            self.no_space = self.no_space or str(outcome["error"])
            self._move(run.run_id, "pending")
            return
        if status == "crashed" and store.finished_status(self.root, run.run_id):
            # the worker died after the run finished: the disk says how it ended
            self._clear_stale_lock(run)
            outcome = {**outcome_of(self.root, run.run_id), "skipped": False}
            status = outcome["status"]
        if status == "crashed":
            self.attempts[run.run_id] += 1
            if self.attempts[run.run_id] <= self.spec.settings.retries:
                self._move(run.run_id, "pending")
                self._push(run)
                return
            recorded = self._record_crash(run, outcome.get("error", "worker died"))
            if recorded is None:  # another process holds it now, or the disk is full
                self._move(run.run_id, "pending")
                self._push(run)
                return
            outcome, status = recorded, "failed"
        self._move(run.run_id, status if status in store.FINISHED else "failed")
        self.outcomes[run.run_id] = outcome
        if outcome.get("skipped"):
            self.counts.skipped += 1
            self.counts.to_skip = max(0, self.counts.to_skip - 1)
        elif isinstance(outcome.get("wall_time_s"), (int, float)):
            self.counts.run_seconds.append(float(outcome["wall_time_s"]))
        counter = {"ok": "done", "diverged": "diverged", "stopped": "stopped"}.get(
            str(status), "failed"
        )
        setattr(self.counts, counter, getattr(self.counts, counter) + 1)
        key = self.search_of.get(run.run_id)
        if key is not None:
            self.advance(self.searches[key])

    def _record_crash(self, run: Run, reason: str) -> dict[str, Any] | None:
        """Write a failed record for a run whose worker died; None when it is not written
        (another live process holds the run, or the disk is full)."""
        directory = store.run_dir(self.root, run.run_id)
        if not locks.try_lock(directory, self.spec.settings.lock_timeout_s):
            return None

        def record() -> None:  # a complete record: the worker may have died before the config
            store.write_json(directory / "config.json", run.config.to_dict())
            record_failure(directory, run.run_id, reason)

        try:
            self.write_or_stop(record, directory)
        finally:
            locks.unlock(directory)
        if self.no_space:
            return None
        return {"run_id": run.run_id, "status": "failed", "error": reason, "skipped": False}

    def write_or_stop(self, write: Callable[[], Any], path: Path) -> None:
        """Run a write of the runner's own; a full disk stops the sweep instead of raising."""
        try:
            write()
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            self.no_space = self.no_space or no_space_message(path)

    def advance(self, s: _Search) -> None:
        """When every run of a search is finished, record its losses and queue its next LRs."""
        if any(self.status[rid] in ("pending", "running") for rid in s.run_ids):
            return
        if any(self.status[rid] == "failed" for rid in s.run_ids):
            return  # a failing setting says nothing about its LRs: stop its search
        by_lr: dict[float, list[float | None]] = {}
        for rid in s.run_ids:
            outcome = self.outcomes[rid]
            loss = outcome.get("final_eval_loss") if outcome.get("status") == "ok" else None
            by_lr.setdefault(self.runs[rid].values[LR_KEY], []).append(loss)
        for lr, losses in by_lr.items():
            finite = [v for v in losses if v is not None and math.isfinite(v)]
            s.search.record(lr, sum(finite) / len(finite) if len(finite) == len(losses) else None)
        for lr in s.search.propose():
            for template in s.templates:
                self.add(self.spec.run_at(template, lr), self.spec.settings_key(template))

    def write_listing(self, force: bool = False) -> None:
        """DIR/sweep.json: the swept keys, the settings, every known run and its status.

        The final listing (``force``) takes each run's status from its directory: finished
        as its summary says, else pending.
        """
        now = time.monotonic()
        if not force and now - self._written < SWEEP_JSON_EVERY_S:
            return
        self._written = now
        status = dict(self.status)
        if force:
            status = {rid: store.finished_status(self.root, rid) or "pending" for rid in status}
        runs = [{**run.to_dict(), "status": status[rid]} for rid, run in self.runs.items()]
        keys = list(dict.fromkeys(k for run in self.runs.values() for k in run.values))
        listing = {"keys": keys, "settings": asdict(self.spec.settings), "runs": runs}
        path = self.root / "sweep.json"
        self.write_or_stop(lambda: store.write_json(path, listing), path)


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    quiet: bool = False,
    stream: TextIO | None = None,
    executor: Executor | None = None,
    runs: list[Run] | None = None,
    retry_failed: bool = False,
    spec_copy: str = "sweep.toml",
) -> Counts:
    """Run (or resume) every run of ``spec`` into ``out_dir``; return the final counts.

    Finished runs are skipped (failed ones are run again once with ``retry_failed``); a run
    left by a killed process is re-run from scratch; a run that raises is recorded as failed
    and the sweep goes on. ``executor`` defaults to the one the spec's ``[sweep]`` table names;
    ``runs`` replaces the spec's grid (as tune does). Every run is checked against this machine
    (device, data length; see preflight.py) before anything is written. A full disk raises
    ConfigError naming the path once the runs in flight have ended; a resume finishes it. A
    directory holding another spec's results is refused (`check_same_spec`); the spec's
    copy there is ``spec_copy`` (a reproduction runs its several specs into one directory,
    each with its own copy).
    """
    settings = spec.settings
    check_executor(settings.executor)
    runs = runs if runs is not None else spec.expand()
    check_runs(runs)
    note = check_same_spec(Path(out_dir), spec, spec_copy)
    root = prepare_dir(out_dir)
    own = executor is None
    executor = executor or make_executor(
        settings.executor, settings.workers, settings.address, settings.devices,
        settings.runs_per_device,
    )  # fmt: skip
    try:
        progress = Progress(executor.workers, quiet, stream)
        if note:
            progress.message(note)
        runner = SweepRunner(spec, root, executor, progress, runs, retry_failed)
        if spec.text:
            copy = root / spec_copy
            runner.write_or_stop(lambda: store.write_text(copy, spec.text), copy)
        return runner.execute()
    finally:
        if own:
            executor.close()
