"""Executors: run :func:`hptransfer.sweep.worker.execute` on many tasks concurrently.

One small interface, two implementations:

- ``local``: ``workers`` long-lived worker processes started with "spawn" (no forked torch
  state), each fed one task at a time over its own pipe by a small supervisor here.
- ``ray``: Ray core tasks, on an existing cluster (``address``) or a local instance started
  here (``pip install "hptransfer[ray]"``); each reserves ``task.threads`` CPUs.

Torch threads per run come from the task (``sweep.threads_per_run``), never from the number
of workers, so a run computes the same losses however many runs go beside it.

A worker process that dies (SIGKILL, out of memory) shows up as a "crashed" outcome for the
one run it was holding, and only that run; the local executor reaps it (so its pid is free, not
a zombie holding the run's lock) and starts a fresh worker in its place. The runner resubmits
the run or records it as failed.
"""

from __future__ import annotations

import multiprocessing
from abc import ABC, abstractmethod
from multiprocessing import connection
from typing import Any

from hptransfer.config import ConfigError
from hptransfer.sweep.worker import RunTask, execute

Outcome = tuple[RunTask, dict[str, Any]]


def crashed(task: RunTask, reason: str) -> dict[str, Any]:
    return {"run_id": task.run_id, "status": "crashed", "error": reason, "skipped": False}


class Executor(ABC):
    """Submit tasks, collect finished outcomes; at most ``workers`` run at once."""

    workers: int

    @abstractmethod
    def submit(self, task: RunTask) -> None: ...

    @abstractmethod
    def wait(self, timeout: float) -> list[Outcome]:
        """Outcomes finished since the last call; blocks up to ``timeout`` s for the first."""

    @abstractmethod
    def close(self) -> None: ...


def serve(conn: connection.Connection) -> None:
    """A worker process's loop: receive a task, send back its outcome, until told to stop (None)
    or the supervisor is gone."""
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        outcome = execute(task)
        try:
            conn.send(outcome)
        except OSError:  # the supervisor died; the run's record is on disk all the same
            return


class _Worker:
    """One worker process, its end of the pipe, and the task it holds (None when idle)."""

    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child,), name="hptransfer-worker")
        self.process.start()
        child.close()
        self.task: RunTask | None = None

    def stop(self, wait_s: float) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(wait_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class LocalExecutor(Executor):
    """Worker processes on this machine, supervised one by one: a death costs one run."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._pool: list[_Worker] = []

    def submit(self, task: RunTask) -> None:
        idle = next((w for w in self._pool if w.task is None), None)
        if idle is None:
            if len(self._pool) >= self.workers:
                raise RuntimeError(f"all {self.workers} workers are busy")
            idle = _Worker(self._ctx)
            self._pool.append(idle)
        idle.conn.send(task)
        idle.task = task

    def wait(self, timeout: float) -> list[Outcome]:
        busy = [w for w in self._pool if w.task is not None]
        if not busy:
            return []
        connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout)
        out: list[Outcome] = []
        for w in busy:
            task = w.task
            assert task is not None
            try:
                if not w.conn.poll():
                    if w.process.is_alive():
                        continue
                    raise EOFError
                out.append((task, w.conn.recv()))
                w.task = None
            except (EOFError, OSError):  # died holding this task (its outcome never came)
                w.process.join()  # reap it: a zombie's pid still answers os.kill(pid, 0)
                code = w.process.exitcode
                out.append((task, crashed(task, f"worker process died (exit code {code})")))
                w.conn.close()
                self._pool.remove(w)
        return out

    def close(self) -> None:
        for w in self._pool:
            w.stop(wait_s=5.0 if w.task is None else 0.0)
        self._pool.clear()


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
        self.workers = workers
        self._cpus = int(ray.cluster_resources().get("CPU", workers))
        self._remote = ray.remote(max_retries=0)(execute)
        self._refs: dict[Any, RunTask] = {}

    def submit(self, task: RunTask) -> None:
        cpus = min(task.threads, self._cpus)
        self._refs[self._remote.options(num_cpus=cpus).remote(task)] = task

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
