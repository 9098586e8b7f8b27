"""Results store: atomic JSON, run locks, provenance, load_runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hptransfer import store


def test_write_json_is_atomic_and_maps_nan_to_null(tmp_path: Path) -> None:
    store.write_json(tmp_path / "a.json", {"x": float("nan"), "y": [1.0, float("inf")]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": [1.0, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    d = tmp_path / "run"
    assert store.try_lock(d)
    record = json.loads((d / "lock").read_text())
    assert record["pid"] == os.getpid() and record["hostname"] == socket.gethostname()
    # held by a live process (here: pretend the parent holds it) -> not taken
    (d / "lock").write_text(json.dumps({**record, "pid": os.getppid()}))
    assert not store.try_lock(d)
    assert store.lock_state(d) == "live"
    store.unlock(d)
    assert store.lock_state(d) == "none" and store.try_lock(d)


@pytest.mark.parametrize(
    "record",
    [
        {"pid": "DEAD", "hostname": socket.gethostname(), "heartbeat": "NOW"},
        {"pid": 1, "hostname": "elsewhere", "heartbeat": 0.0},
    ],
    ids=["dead-pid", "stale-heartbeat"],
)
def test_stale_lock_is_taken_over(tmp_path: Path, record: dict) -> None:
    record = {**record}
    if record["pid"] == "DEAD":
        record["pid"] = _dead_pid()
    if record["heartbeat"] == "NOW":
        record["heartbeat"] = time.time()
    d = tmp_path / "run"
    d.mkdir()
    (d / "lock").write_text(json.dumps(record))
    assert store.lock_state(d) == "stale"
    assert store.try_lock(d)
    assert json.loads((d / "lock").read_text())["pid"] == os.getpid()


def test_other_host_lock_with_fresh_heartbeat_is_respected(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    (d / "lock").write_text(
        json.dumps({"pid": 1, "hostname": "elsewhere", "heartbeat": time.time()})
    )
    assert not store.try_lock(d, timeout_s=60)


def test_environment_records_provenance() -> None:
    env = store.environment(seed=3, corpus_sha256="abc")
    for key in (
        "hptransfer_version",
        "git_revision",
        "torch_version",
        "device",
        "hostname",
        "python",
    ):
        assert key in env
    assert env["seed"] == 3 and env["corpus_sha256"] == "abc"


def _run(root: Path, run_id: str, config: dict, summary: dict | None) -> Path:
    d = store.run_dir(root, run_id)
    d.mkdir(parents=True)
    store.write_json(d / "config.json", config)
    if summary is not None:
        store.write_json(d / "summary.json", summary)
    return d


CFG = {"model": {"width": 64}, "param": {"name": "mup"}, "optimizer": {"name": "adam",
       "lr": 0.01}, "seed": 0}  # fmt: skip


def test_load_runs_statuses_columns_and_swept_keys(tmp_path: Path) -> None:
    _run(
        tmp_path,
        "a",
        CFG,
        {
            "status": "ok",
            "final_eval_loss": 2.5,
            "best_eval_loss": 2.4,
            "steps": 10,
            "wall_time_s": 1.0,
        },
    )
    _run(tmp_path, "b", CFG, {"status": "diverged", "final_eval_loss": None, "steps": 3})
    _run(tmp_path, "c", CFG, {"status": "failed", "error": "Traceback"})
    held = _run(tmp_path, "d", CFG, None)  # live lock (the parent process), no summary: running
    (held / "lock").write_text(
        json.dumps(
            {"pid": os.getppid(), "hostname": socket.gethostname(), "heartbeat": time.time()}
        )
    )
    _run(tmp_path, "e", CFG, None)  # killed: no lock, no summary: pending
    store.write_json(tmp_path / "sweep.json", {
        "keys": ["model.width", "optimizer.lr"],
        "runs": [{"run_id": "f", "config": CFG, "values": {}}],
    })  # fmt: skip
    df = store.load_runs(tmp_path).set_index("run_id")
    assert df["status"].to_dict() == {
        "a": "ok",
        "b": "diverged",
        "c": "failed",
        "d": "running",
        "e": "pending",
        "f": "pending",
    }
    assert list(df.columns[:11]) == list(store.COLUMNS[1:])
    assert df.loc["a", "final_eval_loss"] == 2.5 and df["final_eval_loss"].isna().sum() == 5
    assert df.loc["a", "parameterization"] == "mup" and df.loc["a", "width"] == 64
    assert df.loc["a", "optimizer.lr"] == 0.01 and df.loc["a", "lr"] == 0.01


def test_load_runs_reports_corrupt_runs(tmp_path: Path) -> None:
    _run(tmp_path, "good", CFG, {"status": "ok", "final_eval_loss": 2.5})
    bad = store.run_dir(tmp_path, "bad")
    bad.mkdir(parents=True)
    (bad / "config.json").write_text('{"model": {"wid')
    store.run_dir(tmp_path, "empty").mkdir()
    with pytest.warns(UserWarning, match="2 unreadable"):
        df = store.load_runs(tmp_path)
    assert list(df["run_id"]) == ["good"]
    with pytest.raises(ValueError, match="bad"):
        store.load_runs(tmp_path, errors="raise")
    assert len(store.load_runs(tmp_path, errors="ignore")) == 1


def test_load_runs_of_an_empty_directory(tmp_path: Path) -> None:
    df = store.load_runs(tmp_path)
    assert df.empty and "final_eval_loss" in df.columns
