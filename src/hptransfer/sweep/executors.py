"""Executors: run :func:`hptransfer.sweep.worker.execute` on many tasks concurrently.

One small interface, two implementations:

- ``local``: a pool of ``workers`` processes started with "spawn" (no forked torch state);
  each sets torch threads to max(1, cores // workers).
- ``ray``: Ray core tasks, on an existing cluster (``address``) or a local instance started
  here (``pip install "hptransfer[ray]"``).

A worker process that dies (SIGKILL, out of memory) shows up as a "crashed" outcome for the
runs it was holding; the runner resubmits or records them as failed.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from abc import ABC, abstractmethod
from typing import Any

from hptransfer.config import ConfigError
from hptransfer.sweep.worker import RunTask, execute

Outcome = tuple[RunTask, dict[str, Any]]


def crashed(task: RunTask, reason: str) -> dict[str, Any]:
    return {"run_id": task.run_id, "status": "crashed", "error": reason, "skipped": False}


class Executor(ABC):
    """Submit tasks, collect finished outcomes; at most ``workers`` run at once."""

    workers: int
    threads: int
    """torch threads each task should use."""

    @abstractmethod
    def submit(self, task: RunTask) -> None: ...

    @abstractmethod
    def wait(self, timeout: float) -> list[Outcome]:
        """Outcomes finished since the last call; blocks up to ``timeout`` s for the first."""

    @abstractmethod
    def close(self) -> None: ...


class LocalExecutor(Executor):
    """Worker processes on this machine (concurrent.futures with the "spawn" start method)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._pool = self._new_pool()
        self._futures: dict[cf.Future, RunTask] = {}

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, task: RunTask) -> None:
        self._futures[self._pool.submit(execute, task)] = task

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._futures:
            return []
        done, _ = cf.wait(self._futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out: list[Outcome] = []
        broken = False
        for future in done:
            task = self._futures.pop(future)
            try:
                out.append((task, future.result()))
            except cf.process.BrokenProcessPool as e:
                broken = True
                out.append((task, crashed(task, f"worker process died: {e}")))
        if broken:  # every other future of a broken pool fails too; start a fresh pool
            for task in list(self._futures.values()):
                out.append((task, crashed(task, "worker pool broke")))
            self._futures.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor(Executor):
    """Ray core tasks; ``address`` connects to a running cluster, empty starts a local one."""

    def __init__(self, workers: int = 1, address: str = "") -> None:
        import ray

        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
            ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                     **kwargs)  # fmt: skip
        cpus = int(ray.cluster_resources().get("CPU", workers))
        self.workers = workers
        self.threads = max(1, cpus // workers)
        self._remote = ray.remote(num_cpus=min(self.threads, cpus), max_retries=0)(execute)
        self._refs: dict[Any, RunTask] = {}

    def submit(self, task: RunTask) -> None:
        self._refs[self._remote.remote(task)] = task

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self._ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        out: list[Outcome] = []
        for ref in ready:
            task = self._refs.pop(ref)
            try:
                out.append((task, self._ray.get(ref)))
            except self._ray.exceptions.RayError as e:
                out.append((task, crashed(task, f"ray task failed: {type(e).__name__}: {e}")))
        return out

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def check_executor(name: str) -> None:
    """Fail early (ConfigError) when the executor's package is missing."""
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(
                'sweep.executor = "ray" needs Ray: pip install "hptransfer[ray]"'
            ) from None


def make_executor(name: str, workers: int = 1, address: str = "") -> Executor:
    check_executor(name)
    if name == "ray":
        return RayExecutor(workers, address)
    return LocalExecutor(workers)
