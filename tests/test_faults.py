"""Sweep faults (issue 15): worker deaths, a full disk, lock races and zombie holders, thread
counts, and random SIGKILL / resume cycles. Each test failed on the code before its fix."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from test_sweep import SPEC, events, route_to_fake, start_sweep, write_spec
from test_sweep_fakes import synthetic_loss

from hptransfer import locks, store
from hptransfer.config import ConfigError
from hptransfer.sweep import load_spec, run_sweep


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Route runs to the fake train; returns the path of its start/done log."""
    return route_to_fake(monkeypatch, tmp_path)


def held_locks(out: Path) -> dict[str, int]:
    """run_id -> pid of every run lock readable now (the pid is the worker's)."""
    held = {}
    for lock in (out / "runs").glob("*/lock") if (out / "runs").is_dir() else []:
        try:
            held[lock.parent.name] = int(json.loads(lock.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            pass
    return held


def under_way(out: Path, proc: subprocess.Popen) -> dict[str, int] | bool:
    """The locks held in ``out``, or True once the sweep process has ended."""
    return held_locks(out) or proc.poll() is not None


def wait_for(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def assert_complete_and_exact(out: Path, log: Path) -> None:
    """Every run ok once, with the undisturbed numbers; no lock, temporary or corrupt record;
    sweep.json agrees with the disk."""
    df = store.load_runs(out, errors="raise").set_index("run_id")
    assert set(df["status"]) == {"ok"}
    for run_id, row in df.iterrows():
        assert row["final_eval_loss"] == synthetic_loss(row["lr"], row["width"])
        names = {p.name for p in (out / "runs" / str(run_id)).iterdir()}
        assert "lock" not in names and not any(n.endswith(".tmp") for n in names)
    done = events(log, "done")
    assert len(done) == len(set(done)), "a run finished twice"
    starts = {e["token"] for e in map(json.loads, log.read_text().splitlines())}
    for run_id in df.index:  # each summary is the record of one started attempt
        assert store.read_json(out / "runs" / str(run_id) / "summary.json")["token"] in starts
    listing = {r["run_id"]: r["status"] for r in store.read_json(out / "sweep.json")["runs"]}
    assert listing == df["status"].to_dict()


def test_killing_one_worker_fails_only_its_run_and_retry_failed_reruns_it(tmp_path, fake):
    spec_path = write_spec(tmp_path, SPEC.replace("workers = 2", "workers = 2\nretries = 0"))
    out = tmp_path / "out"
    proc = start_sweep(spec_path, out, {"FAKE_TRAIN_S": "1.0"})
    held = wait_for(lambda: len(held_locks(out)) == 2)
    held = held_locks(out)
    victim, pid = sorted(held.items())[0]
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=120) == 1
    df = store.load_runs(out, errors="raise").set_index("run_id")
    assert df.loc[victim, "status"] == "failed"
    assert "worker process died" in store.read_json(out / "runs" / victim / "summary.json")["error"]
    assert (df["status"] == "ok").sum() == 7  # the run beside it was not charged
    listing = {r["run_id"]: r["status"] for r in store.read_json(out / "sweep.json")["runs"]}
    assert listing == df["status"].to_dict()
    assert held_locks(out) == {}
    spec = load_spec(spec_path)
    started = len(events(fake, "start"))
    again = run_sweep(spec, out, quiet=True)  # a plain resume keeps the failure
    assert (again.failed, again.skipped, len(events(fake, "start"))) == (1, 8, started)
    retried = run_sweep(spec, out, quiet=True, retry_failed=True)
    assert (retried.done, retried.failed, retried.skipped) == (8, 0, 7)
    assert events(fake, "start")[started:] == [victim]
    assert_complete_and_exact(out, fake)


def test_full_disk_stops_the_sweep_with_one_line_and_a_resume_finishes_it(
    tmp_path, fake, monkeypatch, capsys
):
    from hptransfer.cli import main

    monkeypatch.setenv("FAKE_DISK_FULL_SGD", "1")  # the SGD runs find the disk full
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"no space left on device writing {out / 'runs'}" in err[0], err
    df = store.load_runs(out, errors="raise")  # nothing corrupt, nothing charged as failed
    assert "failed" not in set(df["status"]) and held_locks(out) == {}
    monkeypatch.delenv("FAKE_DISK_FULL_SGD")
    counts = run_sweep(load_spec(spec), out, quiet=True)
    assert counts.failed == 0
    assert_complete_and_exact(out, fake)


def test_full_disk_at_the_runners_own_write(tmp_path, fake, monkeypatch):
    write_json = store.write_json

    def full(path: str | Path, obj: Any) -> None:
        if Path(path).name == "sweep.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_json(path, obj)

    monkeypatch.setattr(store, "write_json", full)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"no space left on device writing .*sweep\.json"):
        run_sweep(load_spec(write_spec(tmp_path)), out, quiet=True)
    monkeypatch.setattr(store, "write_json", write_json)
    assert run_sweep(load_spec(write_spec(tmp_path)), out, quiet=True).failed == 0
    assert_complete_and_exact(out, fake)


def _claim(directory: Path, claims: int, doubles: Any) -> None:
    for _ in range(claims):
        if locks.try_lock(directory, timeout_s=60):
            try:
                os.close(os.open(directory / "holder", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os.unlink(directory / "holder")
            except FileExistsError:
                with doubles.get_lock():
                    doubles.value += 1
            locks.unlock(directory)


def test_lock_race_never_has_two_holders(tmp_path):
    """6 processes x 500 claims of one lock: no process ever finds another inside."""
    ctx = multiprocessing.get_context("fork")
    doubles = ctx.Value("i", 0)
    (tmp_path / "run").mkdir()
    procs = [ctx.Process(target=_claim, args=(tmp_path / "run", 500, doubles)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert doubles.value == 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs procfs")
def test_a_zombie_holder_is_dead(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = Path(f"/proc/{child.pid}/stat")
    wait_for(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")  # exited, unreaped
    try:
        d = tmp_path / "run"
        d.mkdir()
        record = {"pid": child.pid, "hostname": socket.gethostname(), "heartbeat": time.time()}
        (d / "lock").write_text(json.dumps(record))
        assert locks.lock_state(d, timeout_s=600) == "stale"
    finally:
        child.wait()


def test_one_and_two_workers_give_bitwise_equal_losses(tmp_path):
    """Real training: the thread count is the sweep's threads_per_run, not cores / workers."""
    # large enough that 1 and 2 threads sum in different orders (width 64 is not)
    text = SPEC.replace('optimizer.name = ["adam", "sgd"]\n', "")
    text = text.replace("model.width = [32, 64]", "model.width = [128]")
    text = text.replace("batch_size = 4", "batch_size = 16").replace("seq_len = 32", "seq_len = 64")
    losses, threads = {}, set()
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        spec = load_spec(write_spec(tmp_path, text), settings={"workers": workers})
        assert run_sweep(spec, out, quiet=True).done == 2
        for d in sorted((out / "runs").iterdir()):
            summary = store.read_json(d / "summary.json")
            losses[workers, d.name] = (summary["losses"], summary["final_eval_loss"])
            threads.add(store.read_json(d / "env.json").get("threads"))
    assert len(losses) == 4
    for (_, run_id), value in losses.items():
        assert value == losses[1, run_id]
    assert threads == {1}  # recorded with the run


def test_random_kills_of_workers_and_sweeps_then_resume(tmp_path, fake):
    """20 SIGKILLs at random moments, of one worker or of the whole sweep, each followed by a
    resume (a fresh worker or a fresh sweep): every run ends once, with the undisturbed
    numbers."""
    text = SPEC.replace("lr = [0.001, 0.004]", "lr = [0.001, 0.002, 0.004]\nseed = [0, 1, 2]")
    spec = write_spec(tmp_path, text.replace("workers = 2", "workers = 2\nretries = 100"))
    rng = random.Random(0)
    outs = [tmp_path / "out"]
    env = {"FAKE_TRAIN_S": "0.3", "FAKE_TRAIN_LOG": f"{outs[-1]}.log"}
    proc = start_sweep(spec, outs[-1], env)
    kills = 0
    while kills < 20:
        if proc.poll() is not None:  # it finished everything: go on in a fresh directory
            assert proc.returncode == 0
            outs.append(tmp_path / f"out{kills}")
            env["FAKE_TRAIN_LOG"] = f"{outs[-1]}.log"
            proc = start_sweep(spec, outs[-1], env)
        if wait_for(partial(under_way, outs[-1], proc)) is True:
            continue
        time.sleep(rng.uniform(0.0, 0.3))
        if rng.random() < 0.5:
            held = held_locks(outs[-1])
            try:  # a lock may be a killed worker's, not yet taken over
                os.kill(rng.choice(sorted(held.values())), signal.SIGKILL)
                kills += 1
            except (IndexError, ProcessLookupError):
                pass
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start_sweep(spec, outs[-1], env)
    assert proc.wait(timeout=120) == 0
    for out in outs:
        log = Path(f"{out}.log")
        assert len(events(log, "start")) > len(events(log, "done")), "no kill landed mid-run"
        assert_complete_and_exact(out, log)


def test_a_second_different_spec_in_one_directory_is_refused(tmp_path, fake, capsys):
    """One line, exit 2, nothing written; the same spec (comments, layout and how it runs
    aside) resumes."""
    from hptransfer.cli import main

    out = tmp_path / "out"
    spec = write_spec(tmp_path)
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = write_spec(tmp_path, SPEC.replace("train.steps = 10", "train.steps = 11"), "b.toml")
    capsys.readouterr()
    assert main(["sweep", str(other), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "another sweep spec" in err[0] and str(out) in err[0], err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    same = write_spec(
        tmp_path, "# resumed\n" + SPEC.replace("workers = 2", "workers = 1"), "c.toml"
    )
    assert main(["sweep", str(same), "--out", str(out), "--quiet"]) == 0


def test_a_spec_that_only_adds_learning_rates_resumes_the_directory(tmp_path, fake, capsys):
    """A widened LR window keeps every finished run (bytes unchanged) and runs the added LRs,
    in the grid and in a case; one that drops an LR or changes a case's other value is
    refused."""
    from hptransfer.cli import main

    base = SPEC.replace("lr = [0.001, 0.004]", "lr = [0.001, 0.004]\n\n[[cases]]\nmodel.depth = 1")
    out = tmp_path / "out"
    assert main(["sweep", str(write_spec(tmp_path, base)), "--out", str(out), "--quiet"]) == 0
    summaries = {p: p.read_bytes() for p in out.glob("runs/*/summary.json")}
    assert len(summaries) == 8
    dropped = base.replace("lr = [0.001, 0.004]", "lr = [0.004, 0.016]")
    case = base.replace("[[cases]]\nmodel.depth = 1", "[[cases]]\nmodel.depth = 2")
    for i, other in enumerate((dropped, case)):
        capsys.readouterr()
        path = write_spec(tmp_path, other, f"refused{i}.toml")
        assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 2
        assert "another sweep spec" in capsys.readouterr().err
    wider = base.replace("lr = [0.001, 0.004]", "lr = [0.0005, 0.001, 0.004]").replace(
        "[[cases]]\nmodel.depth = 1", "[[cases]]\nmodel.depth = 1\nlr = [0.001, 0.004, 0.008]"
    )
    capsys.readouterr()
    assert main(["sweep", str(write_spec(tmp_path, wider, "wide.toml")), "--out", str(out)]) == 0
    assert "adds learning rates to the stored one" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in summaries} == summaries
    assert len(list(out.glob("runs/*/summary.json"))) == 8 + 4  # the case's LRs: + 0.008
    assert (out / "sweep.toml").read_text() == wider


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.width", [32, 2**20]),
        ("train.batch_size", 2**28),
        ("train.eval_batches", 2**40),
        ("data.vocab_size", 2**40),
    ],
)
def test_an_unallocatable_run_is_refused_before_anything_is_written(tmp_path, capsys, key, value):
    from hptransfer.cli import main

    text = re.sub(rf"^{key} = .*$", f"{key} = {value}", SPEC, flags=re.M)  # base or grid
    if text == SPEC:
        text = SPEC.replace("[grid]", f"{key} = {value}\n\n[grid]")
    spec = write_spec(tmp_path, text)
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    shown = value[-1] if isinstance(value, list) else value
    assert len(err) == 1 and f"{key} = {shown}: a run needs at least" in err[0], err
    assert not out.exists()


def test_train_refuses_an_unallocatable_width_before_writing(tmp_path, capsys):
    from hptransfer.cli import main

    out = tmp_path / "out"
    recipe = Path(__file__).parents[1] / "src/hptransfer/recipes/tiny.toml"
    assert main(["train", str(recipe), "--set", "model.width=1048576", "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "model.width = 1048576: a run needs at least" in err[0], err
    assert not out.exists()
