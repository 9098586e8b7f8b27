"""Checkpoints inside a run (train.checkpoint_every): a run stopped at any step and trained
again on the same directory logs exactly the records of the uninterrupted run, bitwise."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from test_trackers import FakeWandbRun
from test_train import TINY as TRAIN_TINY

from hptransfer import checkpoint, store
from hptransfer.config import ConfigError, RunConfig
from hptransfer.optim import OPTIMIZERS
from hptransfer.sweep import worker
from hptransfer.train import train

# test_train's tiny run, with evals and checkpoints often enough that a kill falls between them
TINY = {**TRAIN_TINY, "train.eval_every": 3, "train.checkpoint_every": 4}
OPTIONS = {  # state that changes between checkpoints: roots refreshed, curvature re-estimated
    "shampoo": {"precondition_frequency": 3},
    "sophia": {"curvature_interval": 3},
}


class Killed(Exception):
    """Stands in for a kill: raised after the record of a chosen step is logged."""


def tiny(optimizer: str, **kw) -> RunConfig:
    options = {"optimizer.options": OPTIONS[optimizer]} if optimizer in OPTIONS else {}
    return RunConfig().replace(**{**TINY, "optimizer.name": optimizer, **options, **kw}).validate()


def killed_at(cfg: RunConfig, out: Path, step: int) -> None:
    """Train ``cfg`` into ``out`` and stop it right after step ``step`` is logged."""

    def progress(record: dict) -> None:
        if record["step"] == step:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, out, progress=progress)


@pytest.mark.parametrize("optimizer", ["adam", "shampoo", "sophia"])
def test_a_run_killed_at_a_random_step_resumes_bitwise(tmp_path: Path, optimizer: str) -> None:
    cfg = tiny(optimizer)
    whole = train(cfg, tmp_path / "whole")
    step = random.Random(optimizer).randrange(4, 11)  # after >= 1 checkpoint, before the end
    killed_at(cfg, tmp_path / "cut", step)
    assert store.RunDir(tmp_path / "cut").has_checkpoint()
    resumed = train(cfg, tmp_path / "cut")
    assert resumed["losses"] == whole["losses"] and len(whole["losses"]) == 12
    assert resumed["final_eval_loss"] == whole["final_eval_loss"]
    metrics = [(tmp_path / d / store.METRICS).read_text() for d in ("whole", "cut")]
    assert metrics[0] == metrics[1]  # every record once, every value bitwise
    assert not store.RunDir(tmp_path / "cut").has_checkpoint()  # a finished run drops it


@pytest.mark.filterwarnings("ignore:LAMB's clamp")  # small models: the clamp binds for few tensors
def test_checkpoint_holds_only_plain_data_and_loads_with_weights_only(tmp_path: Path) -> None:
    for name in OPTIMIZERS:
        out = tmp_path / name
        killed_at(tiny(name, **{"train.steps": 5, "train.eval_every": 5}), out, 4)
        state = store.RunDir(out).load_checkpoint()  # weights_only=True
        assert state is not None and state["steps"] == 4 and state["records"] == 4, name


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    killed_at(tiny("adam"), tmp_path, 5)
    with pytest.raises(ConfigError, match="belongs to run"):
        train(tiny("adam", seed=1), tmp_path)


def test_a_corrupt_checkpoint_is_refused_naming_the_file(tmp_path: Path) -> None:
    killed_at(tiny("adam"), tmp_path, 5)
    (tmp_path / store.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=store.CHECKPOINT):
        train(tiny("adam"), tmp_path)


def test_checkpoint_every_is_checked_and_off_by_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.checkpoint_every"):
        RunConfig().replace(**{"train.checkpoint_every": -1}).validate()
    cfg = tiny("adam", **{"train.checkpoint_every": 0})
    assert cfg.run_id() == RunConfig().replace(**{**TINY, "train.checkpoint_every": 0}).run_id()
    killed_at(cfg, tmp_path, 8)
    assert not store.RunDir(tmp_path).has_checkpoint()


def test_the_sweep_worker_resumes_a_killed_run_from_its_checkpoint(tmp_path: Path) -> None:
    cfg = tiny("adam")
    whole = train(cfg, tmp_path / "whole")
    directory = store.run_dir(tmp_path / "sweep", cfg.run_id())
    killed_at(cfg, directory, 9)  # the attempt a killed worker left: checkpoint after step 8
    (directory / store.SUMMARY).write_text("{}")  # and a stray summary, which goes
    task = worker.RunTask(str(tmp_path / "sweep"), cfg.run_id(), cfg.to_dict())
    seen: list[int] = []
    original = torch.optim.lr_scheduler.LambdaLR.step

    def count(self, *args, **kwargs):  # steps trained by the resumed attempt
        seen.append(1)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.lr_scheduler.LambdaLR, "step", count)
        outcome = worker.execute(task)
    assert outcome["status"] == "ok" and not outcome["skipped"]
    assert len(seen) == 12 - 8 + 1  # the scheduler's own first step, then steps 8..11
    assert store.read_json(directory / store.SUMMARY)["losses"] == whole["losses"]
    whole_metrics = (tmp_path / "whole" / store.METRICS).read_text()
    assert (directory / store.METRICS).read_text() == whole_metrics


def test_a_kill_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path: Path) -> None:
    cfg = tiny("adam")
    whole = train(cfg, tmp_path / "whole")
    calls: list[int] = []
    real_save = torch.save

    def save_then_die(obj, f, *args, **kwargs):  # the second checkpoint dies half-written
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half a checkpoint")
            raise Killed
        return real_save(obj, f, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(Killed):
        mp.setattr(torch, "save", save_then_die)
        train(cfg, tmp_path / "cut")
    assert list((tmp_path / "cut").glob(".*.tmp")) == []
    state = store.RunDir(tmp_path / "cut").load_checkpoint()
    assert state is not None and state["steps"] == 4
    assert train(cfg, tmp_path / "cut")["losses"] == whole["losses"]


def test_a_process_killed_by_sigkill_resumes_bitwise(tmp_path: Path) -> None:
    cfg = tiny("sophia", **{"train.steps": 40, "train.eval_every": 10})
    whole = train(cfg, tmp_path / "whole")
    out = tmp_path / "cut"
    code = (
        "import json, sys; from hptransfer.config import from_dict; from hptransfer.train import"
        " train; train(from_dict(json.loads(sys.argv[1])), sys.argv[2])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, "-c", code, json.dumps(cfg.to_dict()), str(out)]
    proc = subprocess.Popen(args, env=env)
    deadline = time.monotonic() + 120
    metrics = out / store.METRICS
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 9:  # checkpoints at 4 and 8
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert store.RunDir(out).has_checkpoint()
    assert train(cfg, out)["losses"] == whole["losses"]
    assert metrics.read_text() == (tmp_path / "whole" / store.METRICS).read_text()


def test_checkpoint_minutes_writes_checkpoints_by_the_clock(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.checkpoint_minutes"):
        RunConfig().replace(**{"train.checkpoint_minutes": -1.0})
    cfg = tiny("adam", **{"train.checkpoint_every": 0, "train.checkpoint_minutes": 1e-9})
    whole = train(cfg, tmp_path / "whole")
    killed_at(cfg, tmp_path / "cut", 6)  # every step is due: the latest is after step 5
    state = store.RunDir(tmp_path / "cut").load_checkpoint()
    assert state is not None and state["steps"] == 6
    assert train(cfg, tmp_path / "cut")["losses"] == whole["losses"]


def test_trackers_receive_each_step_once_across_a_resume(tmp_path: Path, monkeypatch) -> None:
    runs: list[FakeWandbRun] = []
    monkeypatch.setitem(
        sys.modules,
        "wandb",
        types.SimpleNamespace(init=lambda **kw: runs.append(FakeWandbRun(**kw)) or runs[-1]),
    )
    cfg = tiny("adam", **{"track.wandb": True})
    killed_at(cfg, tmp_path, 9)  # steps 0..9 logged; the checkpoint holds 8
    train(cfg, tmp_path)
    first, second = ([step for step, _ in run.logged] for run in runs)
    assert first == list(range(10)) and second == [10, 11]


def test_the_torchrun_layout_holds_the_same_state_as_tensors_alone(tmp_path: Path) -> None:
    """checkpoint.to_tensors / from_tensors (the DCP layout): a round trip gives back the
    state bitwise, int keys and tuples included; another process count is refused."""
    killed_at(tiny("shampoo"), tmp_path, 5)
    state = store.RunDir(tmp_path).load_checkpoint()
    assert state is not None
    flat = checkpoint.to_tensors(state, rank=1, world_size=2)
    assert all(torch.is_tensor(v) for v in flat.values()) and "rng/1/torch" in flat
    back = checkpoint.from_tensors(flat, 1, 2, "here")

    def same(a, b) -> bool:
        if torch.is_tensor(a):
            return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
        return type(a) is type(b) and a == b

    assert same(back, state)
    with pytest.raises(ConfigError, match="written by 2 processes"):
        checkpoint.from_tensors(flat, 0, 1, "here")
