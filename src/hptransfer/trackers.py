"""Experiment trackers: TensorBoard and Weights & Biases copies of what metrics.jsonl records.

The results store (metrics.jsonl, summary.json) stays the source of truth; a tracker receives
every record the trainer writes there, as scalars at the record's ``step``: the train loss and
LR factor each step, and at eval steps the eval loss with the per-layer diagnostics
(``update/NAME``, ``underflow/NAME``, ...). At the end the summary's numbers go in as well.
Trackers are chosen by the ``[track]`` section, which is not part of the run id: turning one on
does not change a run's identity or numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from hptransfer.config import ConfigError, RunConfig


class Sink(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self, summary: dict[str, float]) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics record or summary, except ``step`` (booleans, strings
    and lists are left out)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class TensorBoardSink:
    """Scalars into TensorBoard event files under ``log_dir`` (plus the config as text)."""

    def __init__(self, log_dir: Path, cfg: RunConfig) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "track.tensorboard needs tensorboard: pip install 'hptransfer[track]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", f"```\n{json.dumps(cfg.to_dict(), indent=1)}\n```")

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, summary: dict[str, float]) -> None:
        for tag, value in summary.items():
            self.writer.add_scalar(f"summary/{tag}", value, 0)
        self.writer.close()


class WandbSink:
    """Scalars into a Weights & Biases run (offline mode writes files only)."""

    def __init__(self, directory: Path, cfg: RunConfig) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("track.wandb needs wandb: pip install 'hptransfer[track]'") from None
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.track.wandb_project,
            name=cfg.run_id(),
            dir=str(directory),
            mode=cfg.track.wandb_mode,
            config=cfg.to_dict(),
            reinit="create_new",
        )

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self, summary: dict[str, float]) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if math.isfinite(v)})
        self.run.finish()


class Trackers:
    """The sinks ``[track]`` turned on; does nothing when there are none."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (it must have a ``step``)."""
        if self.sinks:
            values = scalars(record)
            for sink in self.sinks:
                sink.log(values, int(record["step"]))

    def close(self, summary: dict[str, Any]) -> None:
        values = scalars(summary)
        for sink in self.sinks:
            sink.close(values)


def open_trackers(cfg: RunConfig, run_dir: str | Path | None) -> Trackers:
    """Trackers for a run. Files go to ``track.dir/RUN_ID`` when track.dir is set, else into
    the run directory (``tensorboard/``, ``wandb/``); with neither there is nowhere to write."""
    t = cfg.track
    if not (t.tensorboard or t.wandb):
        return Trackers([])
    if t.dir:
        base = Path(t.dir) / cfg.run_id()
    elif run_dir is not None:
        base = Path(run_dir)
    else:
        raise ConfigError("[track] needs a run directory or track.dir to write to")
    sinks: list[Sink] = []
    if t.tensorboard:
        sinks.append(TensorBoardSink(base / "tensorboard", cfg))
    if t.wandb:
        sinks.append(WandbSink(base, cfg))
    return Trackers(sinks)
