"""Run locks: one process at a time runs a run, and a dead holder's lock is taken over.

``DIR/runs/<run_id>/lock`` holds the holder's pid, hostname and heartbeat (refreshed every
HEARTBEAT_S). A run is claimed under a guard file, ``lock.claim``, published with os.link
(which fails when the name exists): under it the claimer reads the lock, and if it is absent or
stale, renames its complete record into place, so no reader ever sees an empty or half-written
lock. A lock whose pid is dead or a zombie (same host), or whose heartbeat is older than the
timeout (any host), is stale and may be taken over. A process killed while writing a record
leaves ``.lock.*.tmp``; the next claim removes those older than CLAIM_GUARD_S.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hptransfer.atomic import read_json, temp_beside, write_json

LOCK_TIMEOUT_S = 600.0
"""A lock whose heartbeat is older than this is stale (the holder is presumed dead)."""

CLAIM_GUARD_S = 10.0
"""A claim guard (``lock.claim``) older than this was left by a killed process and expires."""

HEARTBEAT_S = 5.0
"""Seconds between a lock holder's heartbeats. A lock timeout must span several of them
(sweep.lock_timeout_s >= 3 * HEARTBEAT_S), or a live holder's lock would look stale."""


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
        _remove_dead_temporaries(directory)
        yield True
    finally:
        guard.unlink(missing_ok=True)


def _remove_dead_temporaries(directory: Path) -> None:
    """Remove the ``.lock.*.tmp`` files (of the lock or the guard) that a process killed
    while writing one left; only old ones: a live claimer's is at most a moment old."""
    for tmp in directory.glob(".lock.*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > CLAIM_GUARD_S:
                tmp.unlink()
        except FileNotFoundError:
            pass


def _create_exclusive(path: Path) -> bool:
    """Publish this process's record at ``path`` whole, unless ``path`` exists.

    The record is written to a temporary file first and hard-linked to ``path``; the link
    fails when the name exists, and readers see either no file or the complete record.
    """
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(_lock_record()))
        os.link(tmp, path)
    except (FileExistsError, FileNotFoundError):  # taken, or the holder cleared our temp file
        return False
    finally:
        tmp.unlink(missing_ok=True)
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
