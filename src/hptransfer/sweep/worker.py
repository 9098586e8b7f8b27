"""What a worker process does with one run: claim it, train it, record the outcome.

``execute(task)`` is the only function the executors ship to workers; it takes and returns
plain data, so local processes and Ray tasks run it alike. The train function is named by a
"module:function" string (default ``hptransfer.train:train``; the environment variable
``HPTRANSFER_TRAIN_FN`` substitutes another with the same signature, e.g. a wrapper that adds
logging, or a fast fake in the tests).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hptransfer import store
from hptransfer.config import from_dict

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
    """torch.set_num_threads in the worker (once per process)."""
    lock_timeout_s: float = store.LOCK_TIMEOUT_S
    poll_s: float = 1.0
    """How often to look again at a run that another process holds."""


def train_function() -> str:
    return os.environ.get("HPTRANSFER_TRAIN_FN", DEFAULT_TRAIN)


def _resolve(name: str) -> Callable[..., dict]:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def _set_threads(threads: int) -> None:
    if not _THREADS:
        import torch

        torch.set_num_threads(max(1, threads))
        _THREADS.append(threads)


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


def execute(task: RunTask) -> dict[str, Any]:
    """Run ``task`` unless it is finished; wait while another live process holds it.

    Returns the outcome: run_id, status, losses, steps, wall time, and skipped (True when the
    run was already finished, here or by another sweep).
    """
    directory = store.run_dir(task.root, task.run_id)
    while True:
        if store.finished_status(task.root, task.run_id):
            return _outcome(task.run_id, _summary(directory), skipped=True)
        if store.try_lock(directory, task.lock_timeout_s):
            break
        time.sleep(task.poll_s)
    try:
        if store.finished_status(task.root, task.run_id):  # finished while we took the lock
            return _outcome(task.run_id, _summary(directory), skipped=True)
        return _outcome(task.run_id, _run(task, directory), skipped=False)
    finally:
        store.unlock(directory)


def _run(task: RunTask, directory: Path) -> dict[str, Any]:
    run = store.RunDir(directory)
    run.clear_partial()  # a killed earlier attempt starts from scratch
    # train rewrites env.json with the corpus hash once it has the corpus, before any metric
    run.create(task.config, store.environment(int(task.config.get("seed", 0)), None))
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(directory, task.lock_timeout_s, stop), daemon=True)
    beat.start()
    start = time.perf_counter()
    try:
        _set_threads(task.threads)
        cfg = from_dict(task.config)
        if cfg.run_id() != task.run_id:
            raise RuntimeError(f"config hashes to {cfg.run_id()}, expected {task.run_id}")
        summary = _resolve(task.train_fn)(cfg, out_dir=directory)
    except Exception:
        summary = record_failure(
            directory, task.run_id, traceback.format_exc(), time.perf_counter() - start
        )
    finally:
        stop.set()
        beat.join()
    return summary


def _beat(directory: Path, timeout_s: float, stop: threading.Event) -> None:
    """Refresh the lock's heartbeat a few times per timeout until ``stop`` is set."""
    while not stop.wait(min(30.0, timeout_s / 4)):
        store.heartbeat(directory)
