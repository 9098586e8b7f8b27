"""Tests for experiment trackers (hptransfer.trackers; the track extra): TensorBoard and W&B
(offline) receive every metric the store records, and [track] leaves the run id alone."""

from __future__ import annotations

import json
import struct
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


def wandb_history(path: Path) -> list[dict]:
    """History rows of an offline .wandb file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, pending, rows = 7, b"", []
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", raw[pos + 4 : pos + 7])
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
    return rows


def test_wandb_offline_run_holds_every_logged_scalar(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    train(tiny(**{"track.wandb": True}), tmp_path)
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    rows = {row["_step"]: row for row in wandb_history(files[0])}
    for record in metrics(tmp_path):
        row = rows[record["step"]]
        for key, value in record.items():
            if key != "step":
                assert row[key] == pytest.approx(value, rel=1e-12), key


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
