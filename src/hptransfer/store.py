"""Results on disk.

Layout of a results directory::

    DIR/sweep.toml              the sweep spec, copied
    DIR/sweep.json              expanded run list with each run's status
    DIR/runs/<run_id>/config.json, metrics.jsonl, summary.json, env.json
    DIR/runs/<run_id>/lock      present while a process runs it (pid, hostname, heartbeat)

Every JSON file is written to a temporary name and renamed into place, so a reader (or a
resumed sweep) never sees half a file. A run is finished when its summary.json says ok,
diverged or failed. A run is claimed under a guard file published with os.link (which fails
when the name exists): the claimer reads the lock, and if it is absent or stale, renames its
complete record into place, so no reader ever sees an empty or half-written lock. A lock whose
pid is dead or a zombie (same host), or whose heartbeat is older than the timeout (any host), is
stale and may be taken over.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

FINISHED = ("ok", "diverged", "failed")
"""Statuses of a run that a resumed sweep skips."""

LOCK_TIMEOUT_S = 600.0
"""A lock whose heartbeat is older than this is stale (the holder is presumed dead)."""

CLAIM_GUARD_S = 10.0
"""A claim guard (``lock.claim``) older than this was left by a killed process and expires."""

HEARTBEAT_S = 5.0
"""Seconds between a lock holder's heartbeats. A lock timeout must span several of them
(sweep.lock_timeout_s >= 3 * HEARTBEAT_S), or a live holder's lock would look stale."""

COLUMNS = (
    "run_id", "status", "parameterization", "optimizer", "width", "lr", "seed",
    "final_eval_loss", "best_eval_loss", "steps", "tokens", "wall_time_s",
)  # fmt: skip


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as JSON (NaN and inf written as null)."""
    _write_text(Path(path), json.dumps(_finite(obj), indent=1, sort_keys=True))


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file (for copies of specs and recipes)."""
    _write_text(Path(path), text)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_json(path: str | Path) -> Any:
    """Read a JSON file; raises OSError or ValueError when it is missing or corrupt."""
    return json.loads(Path(path).read_text())


def run_dir(root: str | Path, run_id: str) -> Path:
    return Path(root) / "runs" / run_id


def finished_status(root: str | Path, run_id: str) -> str | None:
    """The run's status if it is finished (ok / diverged / failed), else None."""
    try:
        status = read_json(run_dir(root, run_id) / "summary.json").get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if status in FINISHED else None


# ---------------------------------------------------------------------------------------------
# Locks


def _lock_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "hostname": socket.gethostname(), "heartbeat": time.time()}


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host; a zombie (dead, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): the signal answered
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def lock_is_stale(record: dict[str, Any] | None, timeout_s: float = LOCK_TIMEOUT_S) -> bool:
    """A lock is stale when its heartbeat is too old, or its pid is dead on this host.

    Another host's pid says nothing here, so its lock is judged by the heartbeat age alone. A
    lock naming this very process is stale too: it is left from an earlier run of a recycled
    pid, since a process never waits for a run it holds itself.
    """
    if not isinstance(record, dict):
        return True
    try:
        age = time.time() - float(record.get("heartbeat", 0))
        pid = int(record.get("pid", -1))
    except (TypeError, ValueError):
        return True
    if not age <= timeout_s:
        return True
    if record.get("hostname") == socket.gethostname():
        return pid == os.getpid() or not _pid_alive(pid)
    return False


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def try_lock(directory: str | Path, timeout_s: float = LOCK_TIMEOUT_S) -> bool:
    """Claim ``directory/lock`` when it is absent or stale. True when this process holds it.

    Every change of hands happens under ``lock.claim``, a short-lived guard claimed by
    :func:`_create_exclusive`: under it, the lock is read, judged, and replaced by this
    process's complete record (temporary file, then rename). So no two processes can judge
    the same lock free, and no reader sees a partial record. A busy guard answers False; the
    caller tries again later.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / "lock"
    if not _free(lock, timeout_s):
        return False
    with _claim_guard(directory) as held:
        if not held or not _free(lock, timeout_s):
            return False
        write_json(lock, _lock_record())
        return True


def _free(lock: Path, timeout_s: float) -> bool:
    return not lock.exists() or lock_is_stale(_read_lock(lock), timeout_s)


@contextlib.contextmanager
def _claim_guard(directory: Path) -> Iterator[bool]:
    """Hold ``lock.claim`` for the block (yields False when another process holds it). A guard
    left by a killed process expires after CLAIM_GUARD_S."""
    guard = directory / "lock.claim"
    if not _create_exclusive(guard):
        try:
            if time.time() - guard.stat().st_mtime > CLAIM_GUARD_S:
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        yield False
        return
    try:
        yield True
    finally:
        guard.unlink(missing_ok=True)


def _create_exclusive(path: Path) -> bool:
    """Publish this process's record at ``path`` whole, unless ``path`` exists.

    The record is written to a temporary file first and hard-linked to ``path``; the link
    fails when the name exists, and readers see either no file or the complete record.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(_lock_record()))
        os.link(tmp, path)
    except (FileExistsError, FileNotFoundError):  # taken, or the holder cleared our temp file
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True


def heartbeat(directory: str | Path) -> bool:
    """Refresh the heartbeat of this process's lock; False if the lock is no longer ours (or
    is gone). The fresh record replaces the old one by rename, so it too appears whole."""
    lock = Path(directory) / "lock"
    record = _read_lock(lock) or {}
    mine = _lock_record()
    if (record.get("pid"), record.get("hostname")) != (mine["pid"], mine["hostname"]):
        return False
    write_json(lock, mine)
    return True


def unlock(directory: str | Path) -> None:
    (Path(directory) / "lock").unlink(missing_ok=True)


def clear_stale_lock(directory: str | Path, timeout_s: float = LOCK_TIMEOUT_S) -> None:
    """Remove a stale lock (its holder died after writing the summary, before unlocking);
    under the claim guard, so a lock claimed meanwhile is never removed."""
    if lock_state(directory, timeout_s) != "stale":
        return
    with _claim_guard(Path(directory)) as held:
        if held and lock_state(directory, timeout_s) == "stale":
            unlock(directory)


def lock_state(directory: str | Path, timeout_s: float = LOCK_TIMEOUT_S) -> str:
    """ "none", "live" or "stale" for the lock of a run directory."""
    lock = Path(directory) / "lock"
    if not lock.exists():
        return "none"
    return "stale" if lock_is_stale(_read_lock(lock), timeout_s) else "live"


def clear_partial(directory: str | Path) -> None:
    """Remove what a killed run left (everything but the lock) before running it again."""
    for path in Path(directory).iterdir():
        if path.name != "lock" and path.is_file():
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Provenance

_GIT_CACHE: dict[str, str | None] = {}


def git_revision() -> str | None:
    """HEAD of the git checkout this package is imported from (None outside a checkout)."""
    if "rev" not in _GIT_CACHE:
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                text=True, timeout=5, check=True,
            )  # fmt: skip
            _GIT_CACHE["rev"] = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            _GIT_CACHE["rev"] = None
    return _GIT_CACHE["rev"]


def environment(seed: int, corpus_sha256: str | None) -> dict[str, Any]:
    """Provenance of a run: package, git revision, torch, device, corpus hash, seed, host."""
    from importlib import metadata

    try:
        version = metadata.version("hptransfer")
    except metadata.PackageNotFoundError:
        version = None
    torch = sys.modules.get("torch")
    device = None
    if torch is not None:
        get_default = getattr(torch, "get_default_device", None)
        device = str(get_default()) if get_default is not None else "cpu"
    return {
        "hptransfer_version": version,
        "git_revision": git_revision(),
        "torch_version": getattr(torch, "__version__", None),
        "device": device,
        "corpus_sha256": corpus_sha256,
        "seed": seed,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "pid": os.getpid(),
    }


# ---------------------------------------------------------------------------------------------
# Loading


def load_runs(
    root: str | Path, errors: str = "warn", lock_timeout_s: float = LOCK_TIMEOUT_S
) -> pd.DataFrame:
    """One row per run of a results directory, as a tidy DataFrame.

    Columns: run_id, status (ok / diverged / failed / running / pending), parameterization,
    optimizer, width, lr, seed, final_eval_loss and best_eval_loss (NaN when absent), steps,
    tokens, wall_time_s, then one column per swept key by dotted name (from sweep.json).
    Runs listed in sweep.json without a directory yet are "pending"; a run directory without a
    summary is "running" while its lock is live, else "pending" (a resumed sweep re-runs it).

    Corrupt or partial run directories (unreadable config.json) are skipped and reported:
    ``errors="warn"`` (one warning listing them), ``"raise"`` (ValueError), ``"ignore"``.
    """
    import pandas as pd

    if errors not in ("warn", "raise", "ignore"):
        raise ValueError(f"errors must be warn, raise or ignore, got {errors!r}")
    root = Path(root)
    keys, listed = _sweep_listing(root)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: set[str] = set()
    runs = root / "runs"
    for directory in sorted(runs.iterdir()) if runs.is_dir() else []:
        if not directory.is_dir():
            continue
        try:
            config = read_json(directory / "config.json")
            if not isinstance(config, dict):
                raise ValueError("config.json is not a table")
        except (OSError, ValueError) as e:
            problems.append(f"{directory.name}: {type(e).__name__}: {e}")
            continue
        summary_path = directory / "summary.json"
        summary: dict[str, Any] = {}
        if summary_path.exists():
            try:
                summary = read_json(summary_path)
            except (OSError, ValueError) as e:
                problems.append(f"{directory.name}: summary.json: {type(e).__name__}: {e}")
        status = summary.get("status")
        if status not in FINISHED:
            live = lock_state(directory, lock_timeout_s) == "live"
            status = "running" if live else "pending"
        seen.add(directory.name)
        rows.append(_row(directory.name, status, config, summary, keys))
    for run_id, config in listed.items():
        if run_id not in seen:
            rows.append(_row(run_id, "pending", config, {}, keys))
    if problems and errors == "raise":
        raise ValueError(f"{len(problems)} unreadable run(s) in {root}: " + "; ".join(problems))
    if problems and errors == "warn":
        warnings.warn(
            f"skipped {len(problems)} unreadable run(s) in {root}: " + "; ".join(problems),
            stacklevel=2,
        )
    columns = list(COLUMNS) + [k for k in keys if k not in COLUMNS]
    frame = pd.DataFrame(rows, columns=columns)
    for col in ("final_eval_loss", "best_eval_loss", "wall_time_s", "lr"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    return frame


def _sweep_listing(root: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Swept keys and run_id -> config of the runs a sweep.json lists (empty without one)."""
    try:
        sweep = read_json(root / "sweep.json")
    except (OSError, ValueError):
        return [], {}
    keys = [k for k in sweep.get("keys", []) if isinstance(k, str)]
    listed = {r["run_id"]: r["config"] for r in sweep.get("runs", []) if "config" in r}
    return keys, listed


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and value is not None else math.nan


def _row(
    run_id: str, status: str, config: dict[str, Any], summary: dict[str, Any], keys: list[str]
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": run_id,
        "status": status,
        "parameterization": _lookup(config, "param.name"),
        "optimizer": _lookup(config, "optimizer.name"),
        "width": _lookup(config, "model.width"),
        "lr": _lookup(config, "optimizer.lr"),
        "seed": config.get("seed"),
        "final_eval_loss": _num(summary.get("final_eval_loss")),
        "best_eval_loss": _num(summary.get("best_eval_loss")),
        "steps": summary.get("steps"),
        "tokens": summary.get("tokens"),
        "wall_time_s": _num(summary.get("wall_time_s")),
    }
    for key in keys:
        row.setdefault(key, _lookup(config, key))
    return row
