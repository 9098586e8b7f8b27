"""Progress of a sweep on stderr: one live line on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Counts:
    """Run counts of a sweep; ``pending`` excludes runs an adaptive search has not proposed."""

    done: int = 0
    diverged: int = 0
    failed: int = 0
    stopped: int = 0
    """Stopped early by successive halving (sweep/halving.py)."""
    skipped: int = 0
    running: int = 0
    pending: int = 0
    to_skip: int = 0
    """Pending runs already finished on disk: skipped when the queue reaches them, so not in
    the ETA (a resumed sweep reaches them in its cost order, not first)."""
    run_seconds: list[float] = field(default_factory=list)
    """Wall time of each run executed here (for the ETA)."""

    @property
    def finished(self) -> int:
        return self.done + self.diverged + self.failed + self.stopped

    def line(self, workers: int) -> str:
        parts = [f"{self.finished}/{self.finished + self.running + self.pending} runs",
                 f"{self.done} ok", f"{self.diverged} diverged", f"{self.failed} failed",
                 f"{self.running} running"]  # fmt: skip
        if self.stopped:
            parts.insert(3, f"{self.stopped} stopped")
        if self.skipped:
            parts.append(f"{self.skipped} skipped (finished before)")
        if self.run_seconds and (self.pending or self.running):
            mean = sum(self.run_seconds) / len(self.run_seconds)
            left = max(0, self.pending - self.to_skip)
            eta = mean * (left + self.running / 2) / max(1, workers)
            parts.append(f"ETA {_duration(eta)}")
        return ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Shows :class:`Counts`: rewrites one line on a TTY, else prints every ``every_s``."""

    def __init__(
        self, workers: int, quiet: bool = False, stream: TextIO | None = None,
        every_s: float = 30.0,
    ) -> None:  # fmt: skip
        self.workers = workers
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self._last = 0.0

    def show(self, counts: Counts, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.live:
            self.stream.write("\r\033[K" + counts.line(self.workers))
        elif force or now - self._last >= self.every_s:
            self.stream.write(counts.line(self.workers) + "\n")
        else:
            return
        self._last = now
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (e.g. the skip count), kept apart from the live line."""
        if not self.quiet:
            self.stream.write(("\r\033[K" if self.live else "") + text + "\n")
            self.stream.flush()

    def close(self, counts: Counts) -> None:
        if self.quiet:
            return
        if self.live:  # plain streams got periodic lines; the caller prints the result
            self.stream.write("\r\033[K" + counts.line(self.workers) + "\n")
            self.stream.flush()
