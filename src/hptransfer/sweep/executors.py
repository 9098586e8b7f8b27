"""Executors: run :func:`hptransfer.sweep.worker.execute` on many tasks concurrently.

One small interface, two implementations:

- ``local``: ``workers`` long-lived worker processes started with "spawn" (no forked torch
  state), each fed one task at a time over its own pipe by a small supervisor here. With
  ``devices`` (``sweep.devices``, ``--devices cuda:0,cuda:1``) there are ``runs_per_device``
  workers per device instead, each bound to its device for life: HPTRANSFER_DEVICE names it, and
  a CUDA device is the worker's only visible one (CUDA_VISIBLE_DEVICES), so a run's
  ``train.device = "cuda"`` (and its run id) stays as it is wherever it is placed. A run goes to
  the device with the fewest runs in flight, ties to the one reporting the most free memory
  (nvidia-smi; devices that report none tie), then in the order given.
- ``ray``: Ray core tasks, on an existing cluster (``address``) or a local instance started
  here (``pip install "hptransfer[ray]"``); each reserves ``task.threads`` CPUs, and a CUDA run
  1/``runs_per_device`` of a GPU, so Ray packs that many runs on each GPU.

Torch threads per run come from the task (``sweep.threads_per_run``), never from the number
of workers, so a run computes the same losses however many runs go beside it.

A worker process that dies (SIGKILL, out of memory) shows up as a "crashed" outcome for the
one run it was holding, and only that run; the local executor reaps it (so its pid is free, not
a zombie holding the run's lock) and starts a fresh worker in its place. The runner resubmits
the run or records it as failed.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
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


def device_env(device: str) -> dict[str, str]:
    """The environment of a worker placed on ``device`` (see the module docstring)."""
    env = {"HPTRANSFER_DEVICE": device}
    kind, _, index = device.partition(":")
    if kind == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = index or "0"
    return env


def free_memory(device: str) -> int | None:
    """Free bytes that a CUDA device reports (nvidia-smi), or None (not CUDA, no report)."""
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return None
    query = ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run([*query, "-i", index or "0"], capture_output=True, text=True,
                             timeout=10, check=True).stdout  # fmt: skip
        return int(out.split()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def serve(conn: connection.Connection, device: str = "") -> None:
    """A worker process's loop: receive a task, send back its outcome, until told to stop (None)
    or the supervisor is gone. A worker placed on a device sees only that one."""
    if device:
        os.environ.update(device_env(device))
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

    def __init__(self, ctx: Any, device: str = "") -> None:
        self.conn, child = ctx.Pipe()
        self.device = device
        self.process = ctx.Process(target=serve, args=(child, device), name="hptransfer-worker")
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
    """Worker processes on this machine, supervised one by one: a death costs one run. With
    ``devices``, ``runs_per_device`` workers on each (``workers`` is then their number)."""

    def __init__(
        self, workers: int = 1, devices: Sequence[str] = (), runs_per_device: int = 1,
        memory: Callable[[str], int | None] = free_memory,
    ) -> None:  # fmt: skip
        self.devices = list(devices)
        self.runs_per_device = runs_per_device
        self.workers = len(self.devices) * runs_per_device if self.devices else workers
        self._memory = memory
        self._ctx = multiprocessing.get_context("spawn")
        self._pool: list[_Worker] = []
        self.placed: dict[str, str] = {}
        """run id -> the device it was placed on (with devices)."""
        self.peak: Counter[str] = Counter()
        """The most runs each device held at once."""

    def _busy(self) -> Counter[str]:
        return Counter(w.device for w in self._pool if w.task is not None)

    def _device(self) -> str:
        """The device for the next run: fewest in flight, then most free memory, then order."""
        busy = self._busy()
        free = [d for d in self.devices if busy[d] < self.runs_per_device]
        if not free:
            raise RuntimeError(f"all {self.workers} device slots are busy")
        memory = {d: self._memory(d) for d in free} if len(free) > 1 else {}
        return min(free, key=lambda d: (busy[d], -(memory.get(d) or 0), self.devices.index(d)))

    def submit(self, task: RunTask) -> None:
        device = self._device() if self.devices else ""
        idle = next((w for w in self._pool if w.task is None and w.device == device), None)
        if idle is None:  # a device never has more than runs_per_device workers
            if len(self._pool) >= self.workers:
                raise RuntimeError(f"all {self.workers} workers are busy")
            idle = _Worker(self._ctx, device)
            self._pool.append(idle)
        idle.conn.send(task)
        idle.task = task
        if device:
            self.placed[task.run_id] = device
            self.peak[device] = max(self.peak[device], self._busy()[device])

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

    def __init__(self, workers: int = 1, address: str = "", runs_per_device: int = 1) -> None:
        import ray

        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
            ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                     **kwargs)  # fmt: skip
        self.workers = workers
        self._gpu_share = 1.0 / runs_per_device
        self._cpus = int(ray.cluster_resources().get("CPU", workers))
        self._remote = ray.remote(max_retries=0)(execute)
        self._refs: dict[Any, RunTask] = {}

    def submit(self, task: RunTask) -> None:
        cpus = min(task.threads, self._cpus)
        gpus = self._gpu_share if task.config.get("train", {}).get("device") == "cuda" else 0
        options = self._remote.options(num_cpus=cpus, num_gpus=gpus)
        self._refs[options.remote(task)] = task

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


def make_executor(
    name: str, workers: int = 1, address: str = "", devices: str = "", runs_per_device: int = 1
) -> Executor:
    """The executor ``name``; ``devices`` is sweep.devices (comma-separated, local only)."""
    check_executor(name)
    if name == "ray":
        return RayExecutor(workers, address, runs_per_device)
    names = [d.strip() for d in devices.split(",") if d.strip()]
    return LocalExecutor(workers, names, runs_per_device)
