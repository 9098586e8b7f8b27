"""Tests for experiment trackers (hptransfer.trackers; the track extra): TensorBoard and W&B
(offline) receive every metric the store records, and [track] leaves the run id alone."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from hptransfer.config import ConfigError, RunConfig
from hptransfer.trackers import open_trackers
from hptransfer.train import train

TINY = {
    "model.width": 32,
    "model.depth": 1,
    "model.head_dim": 16,
    "param.base_width": 32,
    "train.steps": 6,
    "train.batch_size": 2,
    "train.seq_len": 16,
    "train.eval_every": 3,
    "train.eval_batches": 1,
    "data.path": str(Path(__file__).parent / "data" / "golden_corpus.txt"),
}


def tiny(**kw: object) -> RunConfig:
    return RunConfig().replace(**{**TINY, **kw}).validate()


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_event_files_hold_every_logged_scalar(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = train(tiny(**{"track.tensorboard": True}), tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    records = metrics(tmp_path)
    expected = {(k, r["step"]): v for r in records for k, v in r.items() if k != "step"}
    got = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    logged = {key: v for key, v in got.items() if not key[0].startswith("summary/")}
    assert set(logged) == set(expected)  # every metric (per-layer diagnostics included), no more
    assert ("update/blocks.0.attn.q.weight", 2) in logged and ("eval_loss", 5) in logged
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-6)  # event files store float32
    assert got[("summary/final_eval_loss", 0)] == pytest.approx(summary["final_eval_loss"])


class FakeWandbRun:
    def __init__(self, **kwargs: object) -> None:
        self.init = kwargs
        self.logged: list[tuple[int, dict]] = []
        self.summary: dict = {}
        self.finished = False

    def log(self, scalars: dict, step: int) -> None:
        self.logged.append((step, dict(scalars)))

    def finish(self) -> None:
        self.finished = True


def test_wandb_receives_every_logged_scalar_at_its_step(tmp_path: Path, monkeypatch) -> None:
    """What hptransfer hands to wandb (a stand-in module records it): every metrics.jsonl
    scalar at its step, the summary, then finish()."""
    runs: list[FakeWandbRun] = []

    def init(**kwargs: object) -> FakeWandbRun:
        runs.append(FakeWandbRun(**kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    cfg = tiny(**{"track.wandb": True})
    summary = train(cfg, tmp_path)
    (run,) = runs
    assert run.init["mode"] == "offline" and run.init["name"] == cfg.run_id()
    logged = dict(run.logged)
    records = metrics(tmp_path)
    assert sorted(logged) == [r["step"] for r in records]
    for record in records:
        assert logged[record["step"]] == {k: v for k, v in record.items() if k != "step"}
    assert run.summary["final_eval_loss"] == summary["final_eval_loss"] and run.finished


def test_real_wandb_writes_an_offline_run(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    train(tiny(**{"track.wandb": True}), tmp_path)
    assert len(list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


def test_track_is_not_part_of_the_run_id_and_is_off_by_default(tmp_path: Path) -> None:
    assert tiny(**{"track.tensorboard": True}).run_id() == tiny().run_id()
    assert tiny(**{"train.steps": 7}).run_id() != tiny().run_id()
    train(tiny(), tmp_path)
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "wandb").exists()


def test_trackers_need_somewhere_to_write(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a run directory or track.dir"):
        open_trackers(tiny(**{"track.tensorboard": True}), None)
    pytest.importorskip("tensorboard")
    cfg = tiny(**{"track.tensorboard": True, "track.dir": str(tmp_path / "tb")})
    open_trackers(cfg, None).close({})
    assert list((tmp_path / "tb" / cfg.run_id() / "tensorboard").glob("events.out.tfevents.*"))
    with pytest.raises(ConfigError, match="track.wandb_mode"):
        tiny(**{"track.wandb_mode": "cloud"})
