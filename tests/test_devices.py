"""Placing runs on devices: the local executor's device slots (sweep.devices, runs_per_device)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hptransfer.sweep import parse_spec, run_sweep
from hptransfer.sweep.executors import LocalExecutor, device_env, make_executor

TESTS = Path(__file__).parent


def test_eight_runs_over_two_fake_devices_two_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "train.log"
    monkeypatch.setenv("HPTRANSFER_TRAIN_FN", "test_sweep_fakes:curve_train")
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(log))
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    spec = parse_spec({
        "base": {"model": {"width": 32, "depth": 1, "head_dim": 16},
                 "train": {"steps": 10, "eval_every": 10}},
        "grid": {"lr": [2**-k for k in range(8, 16)]},
        "sweep": {"devices": "fake:0,fake:1", "runs_per_device": 2},
    })  # fmt: skip
    assert spec.settings.concurrent_runs == 4
    executor = LocalExecutor(4, ["fake:0", "fake:1"], 2, memory=lambda d: None)
    try:
        counts = run_sweep(spec, tmp_path / "out", quiet=True, executor=executor)
    finally:
        executor.close()
    assert counts.done == 8
    events = [json.loads(line) for line in log.read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    # each run trained in a worker of the device the executor placed it on
    assert len(starts) == 8
    assert {e["run_id"]: e["device"] for e in starts} == executor.placed
    assert set(executor.placed.values()) == {"fake:0", "fake:1"}
    # the first four runs fill both devices' two slots; never more than two at once on one
    assert executor.peak == {"fake:0": 2, "fake:1": 2}
    held = {"fake:0": 0, "fake:1": 0}
    for e in sorted(events, key=lambda e: (e["t"], e["event"] == "start")):
        held[e["device"]] += 1 if e["event"] == "start" else -1
        assert held[e["device"]] <= 2


def test_a_cuda_device_is_the_workers_only_visible_one() -> None:
    assert device_env("cuda:1") == {"HPTRANSFER_DEVICE": "cuda:1", "CUDA_VISIBLE_DEVICES": "1"}
    assert device_env("cpu") == {"HPTRANSFER_DEVICE": "cpu"}
    executor = make_executor("local", workers=3, devices="cuda:0, cuda:1", runs_per_device=3)
    assert isinstance(executor, LocalExecutor) and executor.workers == 6


def test_placement_prefers_the_emptiest_then_the_freest_device() -> None:
    free = {"cuda:0": 1 << 30, "cuda:1": 8 << 30}
    executor = LocalExecutor(0, ["cuda:0", "cuda:1"], 2, memory=free.get)
    assert executor._device() == "cuda:1"  # both idle: the one with more free memory
    free["cuda:0"] = 16 << 30
    assert executor._device() == "cuda:0"


@pytest.mark.parametrize(
    ("sweep", "message"),
    [({"runs_per_device": 0}, "sweep.runs_per_device must be >= 1"),
     ({"devices": "cuda:0,,cuda:1"}, "sweep.devices: expected")],
)  # fmt: skip
def test_bad_device_settings_are_refused_by_name(sweep: dict, message: str) -> None:
    from hptransfer.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_spec({"grid": {"lr": [0.001]}, "sweep": sweep})
