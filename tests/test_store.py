"""Results store: atomic JSON, run locks, provenance, load_runs."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hptransfer import locks, store
from hptransfer.errors import ConfigError


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
    assert locks.try_lock(d)
    record = json.loads((d / "lock").read_text())
    assert record["pid"] == os.getpid() and record["hostname"] == socket.gethostname()
    # held by a live process (here: pretend the parent holds it) -> not taken
    (d / "lock").write_text(json.dumps({**record, "pid": os.getppid()}))
    assert not locks.try_lock(d)
    assert locks.lock_state(d) == "live"
    locks.unlock(d)
    assert locks.lock_state(d) == "none" and locks.try_lock(d)


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
    assert locks.lock_state(d) == "stale"
    assert locks.try_lock(d)
    assert json.loads((d / "lock").read_text())["pid"] == os.getpid()


def test_other_host_lock_with_fresh_heartbeat_is_respected(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    (d / "lock").write_text(
        json.dumps({"pid": 1, "hostname": "elsewhere", "heartbeat": time.time()})
    )
    assert not locks.try_lock(d, timeout_s=60)


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


def test_load_runs_reports_a_summary_that_is_not_a_table(tmp_path: Path) -> None:
    _run(tmp_path, "listed", CFG, None)
    (store.run_dir(tmp_path, "listed") / "summary.json").write_text("[]")
    with pytest.warns(UserWarning, match="summary.json is not a table"):
        df = store.load_runs(tmp_path)
    assert df["status"].tolist() == ["pending"]


# --- the run directory ------------------------------------------------------------------------


def _metrics_with_a_cut_last_line(directory: Path) -> list[dict]:
    run = store.RunDir(directory)
    run.create({"seed": 0}, {"seed": 0})
    records = [{"step": 0, "loss": 2.5}, {"step": 1, "loss": float("nan"), "eval_loss": 2.0}]
    for record in records:
        run.log(record)
    run.close()
    with (directory / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "loss": 2.')  # a kill in the middle of a write
    return records


def test_read_metrics_drops_a_half_written_last_line(tmp_path: Path) -> None:
    records = _metrics_with_a_cut_last_line(tmp_path)
    got = store.read_metrics(tmp_path)
    assert [r["step"] for r in got] == [0, 1] and got[0] == records[0]
    assert math.isnan(got[1]["loss"]) and got[1]["eval_loss"] == 2.0
    assert [r["step"] for r in store.RunDir(tmp_path).read_metrics()] == [0, 1]


def test_read_metrics_raises_on_a_corrupt_line_before_the_last(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n{"ste\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 2"):
        store.read_metrics(tmp_path)


def test_alignment_analysis_reads_metrics_through_the_store(tmp_path: Path) -> None:
    """A run directory whose last metrics line was cut by a kill is read like any other."""
    from hptransfer.analysis.alignment import alignment_from_run
    from hptransfer.config import RunConfig

    cfg = RunConfig().replace(**{"model.width": 32, "model.head_dim": 8, "param.base_width": 16})
    run = store.RunDir(tmp_path)
    run.create(cfg.to_dict(), {})
    for step, role_name in ((0, "blocks.0.mlp.fc_in.weight"), (1, "head.weight")):
        run.log({"step": step, **{f"align/{e}/{role_name}": 0.5 for e in ("alpha", "omega", "u")}})
    run.log({"step": 2, **{f"align/{e}/head.weight": 0.9 for e in ("alpha", "omega", "u")}})
    run.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "align/alpha/head.weight": 7')
    per_role, _ = alignment_from_run(tmp_path)
    assert per_role["hidden"]["alpha"] == 0.5
    assert per_role["output"]["alpha"] == pytest.approx(0.7) and per_role["output"]["n_probes"] == 2


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_respect_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        run = store.RunDir(tmp_path / "run")
        run.create({"seed": 0}, {"seed": 0})
        run.log({"step": 0})
        run.finish(store.Summary("r", "ok"))
        store.write_json(tmp_path / "sweep.json", {})
    finally:
        os.umask(old)
    files = [tmp_path / "sweep.json", *(run.path / n for n in ("config.json", "env.json"))]
    files += [run.path / "metrics.jsonl", run.path / "summary.json"]
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o666 & ~umask)}


def test_clear_partial_refuses_a_symlinked_run_directory(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "data.json").write_text("{}")
    link = store.run_dir(tmp_path / "results", "abc")
    link.parent.mkdir(parents=True)
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(ConfigError, match="abc is a symbolic link"):
        store.RunDir(link).clear_partial()
    assert (target / "data.json").exists()


def test_clear_partial_keeps_the_lock_and_removes_the_rest(tmp_path: Path) -> None:
    run = store.RunDir(tmp_path)
    run.create({"seed": 0}, {"seed": 0})
    (tmp_path / "lock").write_text("{}")
    (tmp_path / ".lock.1234abcd.tmp").write_text("{}")  # a heartbeat being written
    (tmp_path / "outside.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "outside.txt")
    run.clear_partial()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock.1234abcd.tmp", "lock"]


def test_create_removes_temporaries_of_killed_writes(tmp_path: Path) -> None:
    for name in ("config.json", "env.json", "summary.json", "metrics.jsonl"):
        (tmp_path / f".{name}.0badf00d.tmp").write_text("{")
    (tmp_path / ".lock.0badf00d.tmp").write_text("{}")  # the lock's own: not ours to remove
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    store.RunDir(tmp_path).create({"seed": 1}, {"seed": 1})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".lock.0badf00d.tmp", "config.json", "env.json", "metrics.jsonl"]
    assert store.read_metrics(tmp_path) == []  # a new attempt starts an empty log


def test_summary_refuses_an_unknown_status() -> None:
    with pytest.raises(ValueError, match="status"):
        store.Summary("r", "pending")


def _train_then_killed(cfg, out_dir):
    """The real train, then a kill before the worker gets control back."""
    from hptransfer.train import train

    train(cfg, out_dir)
    raise KeyboardInterrupt


def test_a_run_killed_after_its_summary_keeps_its_corpus_hash(tmp_path: Path) -> None:
    import torch

    from hptransfer.config import RunConfig
    from hptransfer.sweep.worker import RunTask, execute

    cfg = RunConfig().replace(**{
        "model.width": 32, "model.depth": 1, "model.head_dim": 16, "param.base_width": 32,
        "train.steps": 2, "train.batch_size": 2, "train.seq_len": 16, "train.eval_batches": 1,
    })  # fmt: skip
    task = RunTask(str(tmp_path), cfg.run_id(), cfg.to_dict(), "test_store:_train_then_killed")
    threads = torch.get_num_threads()
    try:
        with pytest.raises(KeyboardInterrupt):
            execute(task)
    finally:
        torch.set_num_threads(threads)
    directory = store.run_dir(tmp_path, cfg.run_id())
    assert store.finished_status(tmp_path, cfg.run_id()) == "ok"
    env = store.read_json(directory / "env.json")
    assert env["corpus_sha256"] == store.read_json(directory / "summary.json")["corpus_sha256"]
    assert env["corpus_sha256"] is not None


def test_a_kill_during_clear_stale_lock_leaves_nothing_for_long(tmp_path: Path) -> None:
    """A process SIGKILLed while publishing the claim guard (between writing its temporary
    record and linking it) leaves ``.lock.claim.<hex>.tmp``; the next claim removes it once it
    is older than any live claimer's, and leaves a fresh one alone."""
    store.write_json(tmp_path / "lock", {"pid": -1, "hostname": socket.gethostname()})  # stale
    code = (
        "import os, signal, sys; from hptransfer import locks; "
        "os.link = lambda *a: os.kill(os.getpid(), signal.SIGKILL); "
        "locks.clear_stale_lock(sys.argv[1])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=False)
    assert proc.returncode == -9
    (left,) = tmp_path.glob(".lock.claim.*.tmp")
    fresh = tmp_path / ".lock.claim.0badf00d.tmp"  # another claimer's, being written
    fresh.write_text("{}")
    old = time.time() - 2 * locks.CLAIM_GUARD_S
    os.utime(left, (old, old))
    locks.clear_stale_lock(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name]  # stale lock gone too


def test_load_runs_reads_asked_config_columns_from_each_run(tmp_path: Path) -> None:
    # sweep.json names only the last spec's keys; the columns come from each run's config
    _run(tmp_path, "a", CFG, {"status": "ok", "final_eval_loss": 2.5})
    _run(tmp_path, "b", {**CFG, "param": {"name": "sp"}}, {"status": "ok"})
    store.write_json(tmp_path / "sweep.json", {"keys": ["model.width"], "runs": []})
    df = store.load_runs(tmp_path, columns=["param.name", "model.depth"]).set_index("run_id")
    assert list(df.columns[-3:]) == ["model.width", "param.name", "model.depth"]
    assert df["param.name"].to_dict() == {"a": "mup", "b": "sp"}
    assert df["model.depth"].isna().all()
