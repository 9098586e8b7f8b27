"""Sweeps end to end with a fast fake train function (HPTRANSFER_TRAIN_FN), plus one real."""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hptransfer import store
from hptransfer.config import ConfigError
from hptransfer.sweep import load_spec, run_sweep
from hptransfer.sweep.progress import Counts, Progress

TESTS = Path(__file__).parent
FAKE = "test_sweep_fakes:fake_train"

SPEC = """
[base]
model.depth = 1
model.head_dim = 16
param.base_width = 32
train.steps = 10
train.batch_size = 4
train.seq_len = 32
train.eval_every = 10
train.eval_batches = 1

[grid]
model.width = [32, 64]
optimizer.name = ["adam", "sgd"]
lr = [0.001, 0.004]

[sweep]
workers = 2
"""


def write_spec(tmp_path: Path, text: str = SPEC, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Route runs to the fake train; returns the path of its start/done log."""
    return route_to_fake(monkeypatch, tmp_path)


def route_to_fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Set the environment that makes sweeps run the fake train; returns its log's path."""
    log = tmp_path / "train.log"
    monkeypatch.setenv("HPTRANSFER_TRAIN_FN", FAKE)
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(log))
    monkeypatch.setenv("FAKE_TRAIN_S", "0.05")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    return log


def events(log: Path, kind: str) -> list[str]:
    if not log.exists():
        return []
    return [
        e["run_id"] for e in map(json.loads, log.read_text().splitlines()) if e["event"] == kind
    ]


def test_sweep_runs_everything_once_resumes_and_records_failures(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_FAIL_SGD", "1")
    spec = load_spec(write_spec(tmp_path))
    out = tmp_path / "out"
    counts = run_sweep(spec, out, quiet=True)
    assert (counts.done, counts.failed, counts.skipped) == (4, 4, 0)
    df = store.load_runs(out)
    assert len(df) == 8 and set(df["status"]) == {"ok", "failed"}
    assert set(df.columns) >= {"model.width", "optimizer.name", "optimizer.lr"}
    failed = df[df["status"] == "failed"].iloc[0]["run_id"]
    summary = store.read_json(out / "runs" / failed / "summary.json")
    assert "RuntimeError: fake failure for sgd" in summary["error"]
    for run_id in df["run_id"]:
        d = out / "runs" / run_id
        assert {"config.json", "summary.json", "env.json"} <= {p.name for p in d.iterdir()}
        assert not (d / "lock").exists()
    env = store.read_json(out / "runs" / df["run_id"][0] / "env.json")
    assert env["torch_version"] and env["seed"] == 0
    assert (out / "sweep.toml").read_text() == SPEC
    assert len(store.read_json(out / "sweep.json")["runs"]) == 8
    # a process killed between writing the summary and unlocking leaves a stale lock
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / "runs" / df["run_id"][0] / "lock"
    stale.write_text(json.dumps({"pid": dead.pid, "hostname": os.uname().nodename, "heartbeat": 0}))
    stream = io.StringIO()
    again = run_sweep(spec, out, stream=stream)
    assert again.skipped == 8 and "skipping 8 finished" in stream.getvalue()
    assert not stale.exists()
    assert sorted(events(fake, "start")) == sorted(df["run_id"])  # nothing ran twice


def test_ls_prints_one_screen_status(tmp_path, fake, monkeypatch, capsys):
    from hptransfer.cli import main

    monkeypatch.setenv("FAKE_TRAIN_FAIL_SGD", "1")
    out = tmp_path / "out"
    text = SPEC.replace("lr = [0.001, 0.004]", "lr = [0.001, 0.004, 0.5]")  # 0.5 diverges
    run_sweep(load_spec(write_spec(tmp_path, text)), out, quiet=True)
    assert main(["ls", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("12 runs: 4 ok, 2 diverged, 0 stopped, 6 failed, 0 running, 0 pending")
    rows = [line.split() for line in lines]
    mup32 = next(r for r in rows if r[:3] == ["mup", "adam", "32"])
    assert mup32[3:8] == ["2", "1", "0", "0", "0"] and mup32[-1] == "2^-7.97"
    assert any("RuntimeError: fake failure for sgd" in line for line in lines)
    assert main(["ls", str(tmp_path / "nowhere")]) == 2
    assert "no such results directory" in capsys.readouterr().err


def test_adaptive_sweep_brackets_the_optimum(tmp_path, fake):
    text = SPEC.replace(
        'optimizer.name = ["adam", "sgd"]\nlr = [0.001, 0.004]',
        'lr = {min = 0.0009765625, max = 0.015625, step = "2^2"}',
    )
    # the neighbour rule refines past the fake's exact vertex (fit stops on it: test_sweep_search)
    text = text.replace("workers = 2", 'workers = 2\nadaptive = true\nrefine = "neighbours"')
    out = tmp_path / "out"
    run_sweep(load_spec(write_spec(tmp_path, text)), out, quiet=True)
    df = store.load_runs(out)
    for _, g in df.groupby("width"):
        best = g.loc[g["final_eval_loss"].idxmin(), "lr"]
        assert abs(math.log2(best) + 7) <= 0.125  # the fake's optimum is 2^-7
        assert g["lr"].min() < best < g["lr"].max()
        assert (g["status"] == "diverged").any()  # extended upward until divergence
    quarters = {round(4 * math.log2(lr)) % 2 for lr in df["lr"]}
    assert quarters == {0, 1}  # refined at 2^(1/4) by default

    coarse = tmp_path / "coarse"
    text = text.replace("adaptive = true", 'adaptive = true\nlr_refine = "2^(1/2)"')
    run_sweep(load_spec(write_spec(tmp_path, text, "coarse.toml")), coarse, quiet=True)
    lrs = store.load_runs(coarse)["lr"]
    assert {round(4 * math.log2(lr)) % 2 for lr in lrs} == {0}  # the half-octave lattice only
    assert len(lrs) < len(df)


CASES = """
[base]
model.depth = 1
model.head_dim = 16

[grid]
model.width = [32, 64]
lr = [0.001, 0.004]

[[cases]]
param.name = "sp"
param.lr_exponents = "global"

[[cases]]
param.name = "mup"
lr = {min = 0.002, max = 0.008, step = "2^1"}
"""


def test_cases_are_zipped_and_crossed_with_the_grid(tmp_path):
    runs = load_spec(write_spec(tmp_path, CASES)).expand()
    got = [(r.config.param.name, r.config.param.lr_exponents, r.values["model.width"],
            r.values["optimizer.lr"]) for r in runs]  # fmt: skip
    assert got == [
        ("sp", "global", 32, 0.001), ("sp", "global", 32, 0.004),
        ("sp", "global", 64, 0.001), ("sp", "global", 64, 0.004),
        ("mup", "per_layer", 32, 0.002), ("mup", "per_layer", 32, 0.004),
        ("mup", "per_layer", 32, 0.008), ("mup", "per_layer", 64, 0.002),
        ("mup", "per_layer", 64, 0.004), ("mup", "per_layer", 64, 0.008),
    ]  # fmt: skip
    assert runs[0].values == {"param.name": "sp", "param.lr_exponents": "global",
                              "model.width": 32, "optimizer.lr": 0.001}  # fmt: skip


def test_adaptive_search_starts_from_each_cases_own_lr_grid(tmp_path, fake):
    text = CASES + "\n[sweep]\nadaptive = true\nworkers = 2\n"
    out = tmp_path / "out"
    run_sweep(load_spec(write_spec(tmp_path, text)), out, quiet=True)
    df = store.load_runs(out)
    for _, g in df.groupby(["parameterization", "width"]):
        best = g.loc[g["final_eval_loss"].idxmin(), "lr"]
        assert abs(math.log2(best) + 7) <= 0.125  # the fake's optimum is 2^-7
    mup = df[df["parameterization"] == "mup"]
    assert 0.002 in set(mup["lr"]) and 0.001 not in set(mup["lr"])  # not the grid's start


BAD = [
    ("[grid]\nlr = [0.1]\n[[cases]]\nmodel.width = [32]\n", "model.width: expected an integer"),
    ("[grid]\nmodel.width = [32]\n[[cases]]\nmodel.width = 64\n", "also in [grid]"),
    ("[[cases]]\nmodel.widht = 64\n", "unknown config key 'model.widht'"),
    ("cases = 3\n", "[[cases]] tables"),
    ('[sweep]\nlr_refine = "2^1"\n', "sweep.lr_refine must be"),
    ("[grid]\nmodel.widht = [32]\n", "unknown config key 'model.widht'"),
    ("[grid]\nmodel.width = []\n", "empty list"),
    ("[grid]\nlr = [0.01, -1.0]\n", "optimizer.lr must be > 0"),
    ('[grid]\nlr = {min = 0.0, max = 1.0, step = "2^(1/2)"}\n', "min must be a positive"),
    ('[grid]\nlr = {min = 0.1, max = 1.0, step = "3"}\n', "lr step"),
    ('[sweep]\nexecutor = "slurm"\n', "sweep.executor: unknown value"),
    ("[sweep]\nwrokers = 2\n", "unknown sweep setting"),
    ("[bases]\n", "unknown sweep spec table"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_bad_specs_fail_before_anything_runs(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_spec(write_spec(tmp_path, text))
    assert [p.name for p in tmp_path.iterdir()] == ["spec.toml"]


def test_unwritable_directory_fails_with_nothing_written(tmp_path, fake):
    spec = load_spec(write_spec(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write results"):
        run_sweep(spec, blocker / "out", quiet=True)
    assert events(fake, "start") == []


def test_dry_run_prints_runs_as_json_lines_without_torch(tmp_path):
    spec = write_spec(tmp_path)
    code = (
        "import sys, json; from hptransfer.cli import sweep as command\n"
        "import argparse; p = argparse.ArgumentParser(); command.add_parser(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:]); a.func(a); assert 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code, "sweep", str(spec), "--dry-run"],
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 8 and len({line["run_id"] for line in lines}) == 8
    assert [line["optimizer.lr"] for line in lines[:2]] == [0.001, 0.004]  # LR varies fastest
    assert lines == [{"run_id": r.run_id, **r.values} for r in load_spec(spec).expand()]
    assert not (tmp_path / "hpt-results").exists()


CLI = (
    "import sys, argparse\n"
    "from hptransfer.cli import sweep as command\n"
    "if __name__ == '__main__':\n"
    "    p = argparse.ArgumentParser(); command.add_parser(p.add_subparsers())\n"
    "    a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
)


def start_sweep(spec: Path, out: Path, env: dict | None = None) -> subprocess.Popen:
    """`hptransfer sweep` in a subprocess of its own session (so killpg takes its workers)."""
    return subprocess.Popen(
        [sys.executable, "-c", CLI, "sweep", str(spec), "--out", str(out), "--quiet"],
        env={**os.environ, **(env or {})}, start_new_session=True,
    )  # fmt: skip


def test_two_sweeps_on_one_directory_never_run_a_run_twice(tmp_path, fake):
    spec = write_spec(tmp_path)
    procs = [start_sweep(spec, tmp_path / "out", {"FAKE_TRAIN_S": "0.3"}) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    started = events(fake, "start")
    assert len(started) == 8 and len(set(started)) == 8
    assert set(store.load_runs(tmp_path / "out")["status"]) == {"ok"}


def test_sigkill_at_random_points_then_resume(tmp_path, fake):
    """Kill the whole sweep (workers included) a few times, resume: all done, once each."""
    text = SPEC.replace("lr = [0.001, 0.004]", "lr = [0.001, 0.002, 0.004]")
    spec = write_spec(tmp_path, text)
    out = tmp_path / "out"
    rng = random.Random(0)
    for _ in range(3):
        started = len(events(fake, "start"))
        proc = start_sweep(spec, out, {"FAKE_TRAIN_S": "0.2"})
        deadline = time.monotonic() + 60
        while len(events(fake, "start")) <= started + rng.randrange(3):  # runs under way
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    final = start_sweep(spec, out)
    assert final.wait(timeout=120) == 0
    df = store.load_runs(out, errors="raise")
    assert len(df) == 12 and set(df["status"]) == {"ok"}
    done = events(fake, "done")
    assert len(events(fake, "start")) > len(done), "no kill landed mid-run"
    assert sorted(set(done)) == sorted(df["run_id"]) and len(done) == len(set(done))
    for run_id in df["run_id"]:
        names = {p.name for p in (out / "runs" / run_id).iterdir()}
        assert "lock" not in names and not any(n.endswith(".tmp") for n in names)


def test_progress_lines():
    counts = Counts(done=3, diverged=1, running=2, pending=4, run_seconds=[2.0, 4.0])
    plain = io.StringIO()
    Progress(2, stream=plain, every_s=0).show(counts)
    assert plain.getvalue() == "4/10 runs, 3 ok, 1 diverged, 0 failed, 2 running, ETA 8s\n"
    # a resume: 3 of the 4 pending runs are finished on disk and will be skipped, not trained
    plain = io.StringIO()
    Progress(2, stream=plain, every_s=0).show(replace(counts, to_skip=3))
    assert plain.getvalue().endswith("2 running, ETA 3s\n")
    quiet = io.StringIO()
    Progress(2, quiet=True, stream=quiet).show(counts)
    assert quiet.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    Progress(2, stream=tty).show(counts)
    assert tty.getvalue().startswith("\r\033[K4/10 runs") and "\n" not in tty.getvalue()


def test_tokens_per_param_sets_steps_per_width(tmp_path):
    from hptransfer.assemble import model_factory
    from hptransfer.sweep.spec import non_embedding_params

    text = SPEC.replace("workers = 2", "tokens_per_param = 20")
    runs = load_spec(write_spec(tmp_path, text)).expand()
    for run in runs:
        cfg = run.config
        model = model_factory(cfg)(cfg.model.width)
        n = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
        assert non_embedding_params(cfg) == n
        assert cfg.train.steps == math.ceil(20 * n / (4 * 32)) == run.values["train.steps"]
    assert runs[-1].config.train.steps > 2 * runs[0].config.train.steps


@pytest.mark.slow
def test_real_tiny_adaptive_sweep(tmp_path):
    """The whole path with the real trainer: adaptive search on a 10-step model."""
    text = SPEC.replace(
        'optimizer.name = ["adam", "sgd"]\nlr = [0.001, 0.004]', "lr = [0.0625]"
    ).replace("model.width = [32, 64]", "model.width = [32]")
    text = text.replace("workers = 2", "workers = 1\nadaptive = true")
    out = tmp_path / "out"
    counts = run_sweep(load_spec(write_spec(tmp_path, text)), out, quiet=True)
    df = store.load_runs(out)
    assert counts.failed == 0 and len(df) >= 3 and set(df["status"]) <= {"ok", "diverged"}
    best = df.loc[df["final_eval_loss"].idxmin(), "lr"]
    assert df["lr"].min() < best < df["lr"].max()
    env = store.read_json(out / "runs" / df["run_id"][0] / "env.json")
    assert len(env["corpus_sha256"]) == 64


def test_costliest_pending_run_starts_first(tmp_path, fake):
    """One worker: the widest runs (largest tokens x width^2 x depth) start first, the order
    of the grid among equals; a FIFO queue would start width 32 first."""
    text = SPEC.replace("model.width = [32, 64]", "model.width = [32, 128, 64]")
    text = text.replace('optimizer.name = ["adam", "sgd"]', 'optimizer.name = ["adam"]')
    text = text.replace("workers = 2", "workers = 1")
    spec = load_spec(write_spec(tmp_path, text))
    out = tmp_path / "out"
    run_sweep(spec, out, quiet=True)
    df = store.load_runs(out).set_index("run_id")
    started = [(int(df.loc[r, "width"]), float(df.loc[r, "lr"])) for r in events(fake, "start")]
    assert started == [(128, 0.001), (128, 0.004), (64, 0.001), (64, 0.004),
                       (32, 0.001), (32, 0.004)]  # fmt: skip


MACHINE = [
    ('train.device = "cuda"', 'train.device = "cuda" but this machine has no CUDA device'),
    ('data.path = "short.txt"', "data.path short.txt: its eval part holds 5 tokens, too few"),
]


@pytest.mark.parametrize("line,message", MACHINE, ids=["no-cuda", "short-data"])
def test_sweep_checks_the_machine_before_writing_anything(
    tmp_path, fake, monkeypatch, capsys, line, message
):
    from hptransfer.cli import main

    if "cuda" in line:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "short.txt").write_text("x" * 50)  # 45 train bytes, 5 eval bytes
    spec = write_spec(tmp_path, SPEC.replace("[grid]", f"{line}\n\n[grid]"))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists() and events(fake, "start") == []
