import dataclasses
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from golden import GOLDEN
from golden import run as golden_run

from hptransfer import store
from hptransfer import train as train_mod
from hptransfer.config import RunConfig
from hptransfer.train import lr_schedule, train

TINY = {
    "model.width": 32,
    "model.depth": 1,
    "model.head_dim": 16,
    "param.base_width": 32,
    "train.steps": 12,
    "train.batch_size": 4,
    "train.seq_len": 32,
    "train.eval_every": 6,
    "train.eval_batches": 2,
    "train.warmup_steps": 2,
}


def tiny(**kw) -> RunConfig:
    return RunConfig().replace(**{**TINY, **kw}).validate()


def test_golden_losses():
    expected = json.loads(GOLDEN.read_text())["losses"]
    got = golden_run()
    assert len(got) == len(expected) == 30
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_same_seed_same_losses_and_other_seed_differs():
    a, b = train(tiny()), train(tiny())
    assert a["losses"] == b["losses"]
    assert train(tiny(seed=1))["losses"] != a["losses"]


def test_summary_and_files(tmp_path):
    s = train(tiny(), tmp_path / "run")
    assert s["status"] == "ok" and s["steps"] == 12
    assert s["tokens"] == 12 * 4 * 32
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("status", "final_eval_loss", "best_eval_loss", "steps", "wall_time_s"):
        assert key in on_disk
    assert on_disk["best_eval_loss"] <= on_disk["final_eval_loss"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12 and "eval_loss" in json.loads(lines[5])
    diag = json.loads(lines[5])
    assert 0 < diag["update/head.weight"] < 1 and 0 <= diag["underflow/head.weight"] <= 1
    assert "update/head.weight" not in json.loads(lines[4])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["width"] == 32


def test_divergence_is_a_result_not_an_exception(tmp_path):
    s = train(
        tiny(
            **{
                "optimizer.lr": 1e4,
                "param.name": "sp",
                "param.lr_exponents": "global",
                "train.warmup_steps": 0,
            }
        ),
        tmp_path,
    )
    assert s["status"] == "diverged"
    assert s["final_eval_loss"] is None and s["steps"] < 12
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("schedule", ["constant", "cosine", "wsd"])
def test_schedules(schedule):
    cfg = tiny(
        **{
            "train.schedule": schedule,
            "train.steps": 100,
            "train.warmup_steps": 10,
            "train.final_lr_frac": 0.1,
            "train.decay_frac": 0.2,
        }
    )
    f = lr_schedule(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    if schedule == "constant":
        assert f(99) == 1.0
    elif schedule == "cosine":
        assert f(99) == pytest.approx(0.1, abs=1e-3) and 0.1 < f(55) < 1.0
    else:
        assert f(79) == 1.0 and f(99) == pytest.approx(0.1) and 0.1 < f(90) < 1.0


@pytest.mark.filterwarnings("ignore:train.dtype = bfloat16")  # on a CPU without bf16 kernels
def test_bfloat16_autocast_trains():
    s = train(tiny(**{"train.dtype": "bfloat16", "train.steps": 30, "optimizer.lr": 1e-2}))
    assert s["status"] == "ok" and math.isfinite(s["final_eval_loss"])
    assert s["losses"][-1] < s["losses"][0]


def test_local_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("hello width scaling world. " * 2000)
    s = train(tiny(**{"data.path": str(path)}))
    assert s["corpus_sha256"] != train(tiny())["corpus_sha256"]


def test_eval_loss_that_is_not_finite_makes_the_run_diverged(tmp_path, monkeypatch):
    """Train losses stay finite; the first eval (after step 6 of 12) returns NaN."""
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: math.nan)
    s = train(tiny(), tmp_path)
    assert s["status"] == "diverged" and s["steps"] == 6
    assert all(math.isfinite(v) for v in s["losses"])
    assert s["final_eval_loss"] is None and s["best_eval_loss"] is None
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_train_writes_env_json_with_real_provenance(tmp_path):
    s = train(tiny(seed=3), tmp_path)
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["torch_version"] == torch.__version__
    assert env["seed"] == 3 and env["device"] == "cpu"
    assert env["threads"] == torch.get_num_threads()
    # the corpus hash is there from the start, so a kill after the summary cannot lose it
    assert env["corpus_sha256"] == s["corpus_sha256"] and len(env["corpus_sha256"]) == 64
    package = Path(train_mod.__file__).parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = None  # not a git checkout (an installed wheel)
    assert env["git_revision"] == rev


def test_a_failed_run_and_train_write_one_summary_schema(tmp_path):
    from hptransfer.sweep.worker import record_failure

    ok = train(tiny(), tmp_path / "ok")
    (tmp_path / "failed").mkdir()
    failed = record_failure(tmp_path / "failed", "abc", "Traceback ...", 1.5)
    fields = [f.name for f in dataclasses.fields(store.Summary)]
    on_disk = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("ok", "failed")]
    for summary in (ok, failed, *on_disk):
        assert sorted(summary) == sorted(fields)
    assert on_disk[1]["status"] == "failed" and on_disk[1]["error"] == "Traceback ..."
    assert on_disk[0]["error"] is None and on_disk[0]["n_params"] > 0
