"""What a worker process does with one run: claim it, train it, record the outcome.

``execute(task)`` is the only function the executors ship to workers; it takes and returns
plain data, so local processes and Ray tasks run it alike. The train function is named by a
"module:function" string (default ``hptransfer.train:train``; the environment variable
``HPTRANSFER_TRAIN_FN`` substitutes another with the same signature, e.g. a wrapper that adds
logging, or a fast fake in the tests).

A full disk (ENOSPC, EDQUOT) is no fault of the run: it is not recorded as failed (there is no
room to record anything) but returned as a "no_space" outcome naming the path, so the runner
stops the sweep cleanly and a resume, once space is freed, runs it again (from its checkpoint
when it has one, train.checkpoint_every; else from scratch).
"""

from __future__ import annotations

import errno
import importlib
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hptransfer import locks, store
from hptransfer.config import from_dict
from hptransfer.sweep.halving import Halving, Hook, Stopped

DEFAULT_TRAIN = "hptransfer.train:train"
_THREADS: list[int] = []


@dataclass(frozen=True)
class RunTask:
    """One run for a worker: where it goes, its config, and how to run it."""

    root: str
    run_id: str
    config: dict[str, Any]
    train_fn: str = DEFAULT_TRAIN
    threads: int = 1
    """torch threads of the run (sweep.threads_per_run), whatever else runs beside it."""
    lock_timeout_s: float = locks.LOCK_TIMEOUT_S
    poll_s: float = 1.0
    """How often to look again at a run that another process holds."""
    rerun_failed: bool = False
    """Run it again if its summary says failed (sweep --retry-failed)."""
    halving: dict[str, Any] | None = None
    """The spec's [halving] table (sweep/halving.py), or None: run to the last step."""
    siblings: tuple[str, ...] = ()
    """Under halving: the runs before this one in its group, compared with at each rung."""


def train_function() -> str:
    return os.environ.get("HPTRANSFER_TRAIN_FN", DEFAULT_TRAIN)


def _resolve(name: str) -> Callable[..., dict]:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _set_threads(threads: int) -> None:
    """torch.set_num_threads(threads), unless this process already runs with that many."""
    if _THREADS[-1:] != [threads]:
        import torch

        torch.set_num_threads(max(1, threads))
        _THREADS.append(threads)


def no_space_message(path: str | os.PathLike) -> str:
    return f"no space left on device writing {path}"


def no_space(run_id: str, path: str | os.PathLike) -> dict[str, Any]:
    """The outcome of a run stopped by a full disk at ``path``."""
    error = no_space_message(path)
    return {"run_id": run_id, "status": "no_space", "error": error, "skipped": False}


def _outcome(run_id: str, summary: dict[str, Any], skipped: bool) -> dict[str, Any]:
    keys = ("status", "final_eval_loss", "best_eval_loss", "steps", "wall_time_s")
    return {"run_id": run_id, "skipped": skipped, **{k: summary.get(k) for k in keys}}


def _summary(directory: Path) -> dict[str, Any]:
    try:
        return store.read_json(directory / "summary.json")
    except (OSError, ValueError):
        return {}


def record_failure(directory: Path, run_id: str, message: str, wall_time_s: float = 0.0) -> dict:
    """Write a "failed" summary (with the traceback or reason) for a run."""
    summary = store.Summary(run_id, "failed", wall_time_s=round(wall_time_s, 3), error=message)
    store.RunDir(directory).finish(summary)
    return summary.to_dict()


def record_stop(
    directory: Path, run_id: str, stop: Stopped, wall_time_s: float, step_tokens: int
) -> dict:
    """Write a "stopped" summary: the train losses logged so far and the last eval loss."""
    records = store.read_metrics(directory)
    losses = [float(r["loss"]) for r in records]
    evals = [float(r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    summary = store.Summary(
        run_id, "stopped", best_eval_loss=min(evals, default=None),
        final_train_loss=losses[-1] if losses else None, steps=len(losses),
        tokens=len(losses) * step_tokens,
        wall_time_s=round(wall_time_s, 3), losses=losses, error=str(stop),
        last_eval_loss=stop.loss,
    )  # fmt: skip
    store.RunDir(directory).finish(summary)
    return summary.to_dict()


def execute(task: RunTask) -> dict[str, Any]:
    """Run ``task`` unless it is finished; wait while another live process holds it.

    Returns the outcome: run_id, status, losses, steps, wall time, and skipped (True when the
    run was already finished, here or by another sweep).
    """
    directory = store.run_dir(task.root, task.run_id)
    _set_threads(task.threads)  # imports torch (seconds) before the run is claimed
    try:
        while True:
            if _done(task):
                return _outcome(task.run_id, _summary(directory), skipped=True)
            if locks.try_lock(directory, task.lock_timeout_s):
                break
            time.sleep(task.poll_s)
        try:
            if _done(task):  # finished while we took the lock
                return _outcome(task.run_id, _summary(directory), skipped=True)
            return _outcome(task.run_id, _run(task, directory), skipped=False)
        finally:
            locks.unlock(directory)
    except OSError as e:
        if e.errno in NO_SPACE:
            return no_space(task.run_id, e.filename or directory)
        raise


def _done(task: RunTask) -> bool:
    """Finished, and not a failure this task is to run again."""
    status = store.finished_status(task.root, task.run_id)
    return status is not None and not (task.rerun_failed and status == "failed")


def _run(task: RunTask, directory: Path) -> dict[str, Any]:
    run = store.RunDir(directory)
    run.clear_partial()  # a killed earlier attempt starts from scratch, or from its checkpoint
    if not run.has_checkpoint():
        # train rewrites env.json with the corpus hash once it has the corpus, before any metric
        run.create(task.config, store.environment(int(task.config.get("seed", 0)), None))
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(directory, task.lock_timeout_s, stop), daemon=True)
    beat.start()
    start = time.perf_counter()
    try:
        train = _resolve(task.train_fn)
        cfg = from_dict(task.config)
        if cfg.run_id() != task.run_id:
            raise RuntimeError(f"config hashes to {cfg.run_id()}, expected {task.run_id}")
        if task.halving is None:
            summary = train(cfg, out_dir=directory)
        else:
            rule = Halving(**task.halving)
            rungs = rule.rung_steps(cfg.train.steps, cfg.train.eval_every)
            hook = Hook(rule, rungs, Path(task.root), list(task.siblings), task.lock_timeout_s)
            summary = train(cfg, out_dir=directory, progress=hook)
    except Stopped as e:
        t = cfg.train
        elapsed = time.perf_counter() - start
        summary = record_stop(directory, task.run_id, e, elapsed, t.batch_size * t.seq_len)
    except Exception as e:
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            raise
        summary = record_failure(
            directory, task.run_id, traceback.format_exc(), time.perf_counter() - start
        )
    finally:
        stop.set()
        beat.join()
    return summary


def _beat(directory: Path, timeout_s: float, stop: threading.Event) -> None:
    """Refresh the lock's heartbeat every HEARTBEAT_S (or a quarter of a shorter timeout) until
    ``stop`` is set; a failed refresh (a full disk, a lost lock) is tried again next time."""
    while not stop.wait(min(locks.HEARTBEAT_S, timeout_s / 4)):
        try:
            locks.heartbeat(directory)
        except OSError:
            pass
