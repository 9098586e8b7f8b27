"""Files that appear whole: every write goes to a temporary name beside its target, is
flushed and fsynced, and is renamed over the target, so a reader (or a process resumed after a
kill) sees the old file or the complete new one, never half of one.

Temporary files are ``.NAME.<random>.tmp``, opened with mode 0o666 so that the process umask
decides the mode, as for any file the user creates (``tempfile.mkstemp`` would force 0o600).
The run directory's owner (`hptransfer.store`) and the run locks (`hptransfer.locks`) write
through this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as JSON (NaN and inf written as null)."""
    write_text(path, json.dumps(_finite(obj), indent=1, sort_keys=True))


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    with atomic(Path(path), "w") as f:
        f.write(text)


def read_json(path: str | Path) -> Any:
    """Read a JSON file; raises OSError or ValueError when it is missing or corrupt."""
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def atomic(path: Path, mode: str) -> Iterator[IO[Any]]:
    """A file opened on a temporary name beside ``path``; on a clean exit it is flushed,
    fsynced and renamed over ``path``. On an exception the temporary file is removed."""
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_beside(path: Path) -> tuple[int, Path]:
    """A new ``.NAME.<random>.tmp`` next to ``path``, opened for writing (mode 0o666 & ~umask)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), tmp
        except FileExistsError:
            continue


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
