"""Results on disk: the run directory's one owner.

Layout of a results directory::

    DIR/sweep.toml              the sweep spec, copied
    DIR/sweep.json              expanded run list with each run's status
    DIR/runs/<run_id>/config.json, metrics.jsonl, summary.json, env.json
    DIR/runs/<run_id>/checkpoint.pt  the latest checkpoint (train.checkpoint_every), until done
    DIR/runs/<run_id>/checkpoint-<steps>/  the same, written by every rank under torchrun
    DIR/runs/<run_id>/lock      present while a process runs it (pid, hostname, heartbeat)

A run directory is written through :class:`RunDir` alone: ``create`` (config.json and
env.json), ``log`` (one metrics.jsonl line per record), ``finish`` (summary.json, a
:class:`Summary`); ``save_checkpoint`` / ``load_checkpoint`` / ``resume`` for a run continued
from its checkpoint (`hptransfer.checkpoint` says what one holds). Every JSON file (and the
checkpoint) is written to a temporary name and renamed into place, so a reader (or a resumed
sweep) never sees half a file; files are created with the mode the umask allows. metrics.jsonl
is appended to, so a killed run can leave half a last line: :func:`read_metrics` drops it. A
run is finished when its summary.json says ok, diverged or failed. The lock is
`hptransfer.locks`'s (a run directory's files other than the lock's are this module's); the
atomic writes are `hptransfer.atomic`'s, whose ``write_json``, ``write_text`` and ``read_json``
the rest of the package reaches through this module.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, get_args

from hptransfer.atomic import atomic, read_json, write_json, write_text
from hptransfer.errors import ConfigError
from hptransfer.locks import LOCK_TIMEOUT_S, lock_state

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

Status = Literal["ok", "diverged", "failed", "stopped"]
FINISHED: tuple[Status, ...] = get_args(Status)
"""Statuses of a finished run (summary.json written); a resumed sweep skips these."""

CONFIG, ENV, METRICS, SUMMARY = "config.json", "env.json", "metrics.jsonl", "summary.json"
CHECKPOINT = "checkpoint.pt"
SHARDED = "checkpoint"
"""The files of a run directory (a torchrun job's checkpoints: ``checkpoint-<steps>/``)."""

COLUMNS = (
    "run_id", "status", "parameterization", "optimizer", "width", "lr", "seed",
    "final_eval_loss", "best_eval_loss", "steps", "tokens", "wall_time_s",
)  # fmt: skip


def run_dir(root: str | Path, run_id: str) -> Path:
    """The directory of run ``run_id`` in the results directory ``root``."""
    return Path(root) / "runs" / run_id


def finished_status(root: str | Path, run_id: str) -> str | None:
    """The run's status if it is finished (ok / diverged / failed / stopped), else None."""
    try:
        status = read_json(run_dir(root, run_id) / SUMMARY).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if status in FINISHED else None


# ---------------------------------------------------------------------------------------------
# Run directories


@dataclass(frozen=True)
class Summary:
    """summary.json: how a run ended. The one definition of its schema (train and a failed
    sweep run write the same keys; a value that does not apply is None)."""

    run_id: str
    status: Status
    final_eval_loss: float | None = None
    """Eval loss after the last step; None unless the run is ok."""
    best_eval_loss: float | None = None
    final_train_loss: float | None = None
    steps: int = 0
    tokens: int = 0
    wall_time_s: float = 0.0
    n_params: int | None = None
    corpus_sha256: str | None = None
    losses: list[float] = field(default_factory=list)
    """Train loss of every step taken."""
    error: str | None = None
    """Why a failed run failed (the traceback), or where a stopped run stopped; else None."""
    last_eval_loss: float | None = None
    """A stopped run's eval loss when successive halving stopped it (sweep/halving.py)."""

    def __post_init__(self) -> None:
        if self.status not in FINISHED:
            raise ValueError(f"summary status must be one of {FINISHED}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunDir:
    """One run's directory, ``DIR/runs/<run_id>`` in a sweep or ``--out`` of ``train``; the one
    writer of its config.json, env.json, metrics.jsonl and summary.json."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._log: IO[str] | None = None

    def create(self, config: dict[str, Any], environment: dict[str, Any]) -> None:
        """Start the run: config.json and env.json written whole, metrics.jsonl empty, and the
        temporary files of writes killed half-way removed."""
        self._remove_temporaries()
        write_json(self.path / CONFIG, config)
        write_json(self.path / ENV, environment)
        write_text(self.path / METRICS, "")
        self.remove_checkpoints()

    def _remove_temporaries(self) -> None:
        self.close()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError, PermissionError, FileNotFoundError) as e:
            # bad input (--out names a file or an unwritable place); a full disk stays OSError
            raise ConfigError(f"cannot write the run directory {self.path}: {e.strerror}") from None
        for name in (CONFIG, ENV, METRICS, SUMMARY, CHECKPOINT):
            for tmp in self.path.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
        for tmp in self.path.glob(f".{SHARDED}-*.tmp"):
            _remove_tree(tmp)

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file() or bool(self.sharded_checkpoints())

    def remove_checkpoints(self) -> None:
        (self.path / CHECKPOINT).unlink(missing_ok=True)
        for path in self.sharded_checkpoints():
            _remove_tree(path)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write checkpoint.pt (``torch.save`` of tensors, numbers, strings, lists and dicts)
        to a temporary name, fsync, and rename it into place: a kill leaves the previous one."""
        import torch

        with atomic(self.path / CHECKPOINT, "wb") as f:
            torch.save(state, f)

    def sharded_checkpoints(self) -> list[Path]:
        """The complete ``checkpoint-<steps>`` directories (torchrun), oldest first."""
        found = [p for p in self.path.glob(f"{SHARDED}-*") if p.is_dir() and not p.is_symlink()]
        return sorted(found, key=lambda p: p.name)

    def save_sharded_checkpoint(self, tensors: dict[str, Any], steps: int) -> None:
        """Every rank of a torchrun job writes its part of ``checkpoint-<steps>`` (a
        ``torch.distributed.checkpoint`` directory) into ``.checkpoint-<steps>.tmp``; after a
        barrier rank 0 renames it into place and removes the older ones. A kill leaves the
        previous checkpoint whole and a temporary directory that the next attempt removes."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        final = self.path / f"{SHARDED}-{steps:08d}"
        tmp = self.path / f".{final.name}.tmp"
        main = dist.get_rank() == 0
        if main:
            _remove_tree(tmp)
        dist.barrier()
        dcp.save(tensors, checkpoint_id=tmp)  # fsyncs every file; rank 0 writes .metadata last
        dist.barrier()
        if main:
            _remove_tree(final)
            os.rename(tmp, final)
            for older in self.sharded_checkpoints():
                if older != final:
                    _remove_tree(older)
        dist.barrier()

    def load_sharded_checkpoint(self) -> tuple[dict[str, Any], str] | None:
        """The latest ``checkpoint-<steps>`` as a flat dict of tensors (every rank calls it) and
        its path; None when there is none. Raises ConfigError naming it when it is unreadable."""
        import pickle

        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        found = self.sharded_checkpoints()
        if not found:
            return None
        path = found[-1]
        try:
            entries = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
            tensors = {
                key: torch.empty(meta.size, dtype=meta.properties.dtype)
                for key, meta in entries.items()
                if isinstance(meta, TensorStorageMetadata)
            }
            dcp.load(tensors, checkpoint_id=path)
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError,
                dcp.CheckpointException) as e:  # fmt: skip
            what = type(e).__name__
            raise ConfigError(
                f"{path}: unreadable checkpoint ({what}); remove it to start over"
            ) from None
        return tensors, str(path)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """checkpoint.pt loaded with ``weights_only=True`` onto the CPU; None when absent.
        Raises ConfigError naming the file when it cannot be read."""
        import pickle

        import torch

        path = self.path / CHECKPOINT
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            what = type(e).__name__
            raise ConfigError(
                f"{path}: unreadable checkpoint ({what}); remove it to start over"
            ) from e
        if not isinstance(state, dict):
            raise ConfigError(f"{path}: not a checkpoint; remove it to start over")
        return state

    def resume(self, records: int, environment: dict[str, Any]) -> int:
        """Continue the run from a checkpoint taken after ``records`` metrics records: keep
        those lines of metrics.jsonl byte for byte (drop what was logged after it), rewrite
        env.json for this attempt, remove temporary files and any summary.json. Returns how
        many whole records the file held (what the killed attempt logged, and sent to the
        trackers)."""
        self._remove_temporaries()
        path = self.path / METRICS
        whole = path.read_text().split("\n")[:-1]  # not a last line a kill left without "\n"
        held = [line for line in whole if line.strip()]
        lines = held[:records]
        if len(lines) < records:
            raise ConfigError(
                f"{path} holds fewer than the {records} records {self.path / CHECKPOINT} "
                "continues; remove the checkpoint to start over"
            )
        write_text(path, "".join(line + "\n" for line in lines))
        write_json(self.path / ENV, environment)
        (self.path / SUMMARY).unlink(missing_ok=True)
        return len(held)

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one metrics.jsonl line (NaN written as NaN). The file stays
        open, line-buffered: each record reaches the file when it is logged."""
        if self._log is None:
            self._log = (self.path / METRICS).open("a", buffering=1)
        self._log.write(json.dumps(record) + "\n")

    def finish(self, summary: Summary) -> None:
        """Write summary.json: from here on the run is finished. The checkpoint goes, unless
        the run failed (a retry, sweep --retry-failed, resumes from it)."""
        self.close()
        write_json(self.path / SUMMARY, summary.to_dict())
        if summary.status != "failed":
            self.remove_checkpoints()

    def close(self) -> None:
        """Close metrics.jsonl (``finish`` does; a run that raises may call it)."""
        if self._log is not None:
            self._log.close()
            self._log = None

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def clear_partial(self) -> None:
        """Remove what a killed attempt left (every file but the lock's) before a new one;
        with a checkpoint, keep it and what it continues (config, env, metrics, tokenizer) and
        remove only summary.json and temporary files, so the next attempt resumes.

        Raises ConfigError when the directory is a symbolic link: deleting through it would
        delete files wherever it points.
        """
        if self.path.is_symlink():
            raise ConfigError(
                f"{self.path} is a symbolic link, not a run directory; remove the link"
            )
        if not self.path.is_dir():
            return
        if self.has_checkpoint():
            self._remove_temporaries()
            (self.path / SUMMARY).unlink(missing_ok=True)
            return
        for path in self.path.iterdir():
            lock_file = path.name == "lock" or path.name.startswith(("lock.", ".lock."))
            if not lock_file and (path.is_symlink() or path.is_file()):
                path.unlink(missing_ok=True)


def _remove_tree(path: Path) -> None:
    """Remove a directory of this run's own (a checkpoint); a symbolic link is unlinked, never
    followed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def read_metrics(directory: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order.

    A last line without its newline is a write cut short by a kill and is dropped when it is
    not whole JSON; a corrupt line elsewhere raises ValueError naming the file and line. A
    missing file raises FileNotFoundError.
    """
    path = Path(directory) / METRICS
    lines = path.read_text().split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return records


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


def environment(seed: int, corpus_sha256: str | None, device: str | None = None) -> dict[str, Any]:
    """Provenance of a run: package, git revision, torch, device, threads, corpus hash, seed,
    host. ``device`` is the one the run trains on (default: torch's default device)."""
    from importlib import metadata

    try:
        version = metadata.version("hptransfer")
    except metadata.PackageNotFoundError:
        version = None
    torch = sys.modules.get("torch")
    if torch is not None and device is None:
        get_default = getattr(torch, "get_default_device", None)
        device = str(get_default()) if get_default is not None else "cpu"
    return {
        "hptransfer_version": version,
        "git_revision": git_revision(),
        "torch_version": getattr(torch, "__version__", None),
        "device": device,
        "threads": torch.get_num_threads() if torch is not None else None,
        "corpus_sha256": corpus_sha256,
        "seed": seed,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "pid": os.getpid(),
    }


# ---------------------------------------------------------------------------------------------
# Loading


def load_runs(
    root: str | Path,
    errors: str = "warn",
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    columns: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per run of a results directory, as a tidy DataFrame.

    Columns: run_id, status (ok / diverged / failed / running / pending), parameterization,
    optimizer, width, lr, seed, final_eval_loss and best_eval_loss (NaN when absent), steps,
    tokens, wall_time_s, then one column per swept key by dotted name (from sweep.json), then
    one per dotted config key in ``columns`` (read from each run's config.json; None where a
    config lacks it): sweep.json names only the last sweep's keys, so a directory that several
    specs ran into asks for its setting columns here.
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
    keys += [k for k in columns if k not in keys]
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: set[str] = set()
    runs = root / "runs"
    for directory in sorted(runs.iterdir()) if runs.is_dir() else []:
        if not directory.is_dir():
            continue
        try:
            config = read_json(directory / CONFIG)
            if not isinstance(config, dict):
                raise ValueError("config.json is not a table")
        except (OSError, ValueError) as e:
            problems.append(f"{directory.name}: {type(e).__name__}: {e}")
            continue
        summary_path = directory / SUMMARY
        summary: dict[str, Any] = {}
        if summary_path.exists():
            try:
                summary = read_json(summary_path)
                if not isinstance(summary, dict):
                    raise ValueError("summary.json is not a table")
            except (OSError, ValueError) as e:
                problems.append(f"{directory.name}: summary.json: {type(e).__name__}: {e}")
                summary = {}
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
