"""Data parallel (DDP) and fully sharded (FSDP2) training on CPU (gloo) equal one process.

Two worker processes (torch.multiprocessing spawn, a free port) train the same tiny nanodo with
the same global batch as a single process here; per-step train losses, eval losses and the
per-layer diagnostics must agree. float64 parameters, but the model returns float32 logits, so
the loss itself is float32: the tolerance is 1e-5 relative (measured differences ~3e-7). Muon
is the exception: torch runs its Newton-Schulz iteration in bfloat16, and sharded matmuls round
differently (measured 2e-3 on per-layer update sizes), so it gets 1e-2.

Once in CI (and in none of 13 runs under load here) a worker died inside native code (glibc:
"malloc(): unaligned tcache chunk detected", SIGABRT) with no Python frame of ours on the way.
A worker killed by a signal is therefore run once more, with a warning naming the job it was
on; a second native crash, any Python exception and any numerical mismatch still fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from golden import CORPUS

from hptransfer import distributed
from hptransfer.assemble import build
from hptransfer.config import ConfigError, RunConfig
from hptransfer.train import train

TINY = {
    "model.width": 32,
    "model.depth": 2,
    "model.head_dim": 16,
    "param.base_width": 16,  # multipliers != 1, so the forward hooks matter
    "train.steps": 10,
    "train.batch_size": 4,
    "train.seq_len": 32,
    "train.eval_every": 5,
    "train.eval_batches": 2,
    "train.warmup_steps": 2,
    "train.dtype": "float64",
    "train.grad_clip": 0.1,  # active: the clipped global norm must be the global one
    "data.path": str(CORPUS),
}
# every optimizer FSDP_OPTIMIZERS lists, a few steps each; SGD at an LR where the clip matters
FSDP_SHORT = {"train.steps": 4, "train.eval_every": 4}
SGD = {"optimizer.name": "sgd", "optimizer.lr": 0.1}
WORLD = 2


def tiny(**kw) -> RunConfig:
    return RunConfig().replace(**{**TINY, **kw}).validate()


def jobs() -> dict[str, RunConfig]:
    out = {
        "ddp": tiny(**{"train.distributed": "ddp"}),
        "fsdp": tiny(**{"train.distributed": "fsdp"}),
    }
    for name in distributed.FSDP_OPTIMIZERS:
        if name != "adam":
            kw = SGD if name == "sgd" else {"optimizer.name": name}
            out[f"fsdp_{name}"] = tiny(**{"train.distributed": "fsdp", **kw, **FSDP_SHORT})
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    results: dict = {}
    for key, cfg in jobs().items():
        Path(root, f"progress{rank}").write_text(key)
        s = train(cfg, Path(root) / key / f"rank{rank}")
        results[key] = {"losses": s["losses"], "eval": s["final_eval_loss"]}
    # the parameterization's groups survive sharding: same names and LRs, sharded tensors
    cfg = jobs()["fsdp"]
    setup = build(cfg)
    groups = setup.parameterization.param_groups
    ctx = distributed.start(cfg)
    _, opt = distributed.prepare(setup.model, setup.optimizer, groups, cfg, ctx)
    Path(root, f"progress{rank}").write_text("groups")
    results["groups"] = [
        {
            "name": g["name"],
            "lr": g["lr"],
            "param_names": g["param_names"],
            "rows": [p.to_local().shape[0] for p in g["params"]],
        }
        for g in opt.param_groups
    ]
    Path(root, f"results{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def _spawn(root: Path, timeout_s: float = 240.0) -> list[dict]:
    try:
        return _spawn_once(root, timeout_s)
    except mp.ProcessExitedException as e:
        if e.signal_name is None:  # exited with an error code: not a native crash
            raise
        where = {r: _read(root / f"progress{r}") for r in range(WORLD)}
        warnings.warn(
            f"distributed worker {e.error_index} died of {e.signal_name} in {where}; "
            "running the workers again",
            stacklevel=1,
        )
    for path in root.iterdir():  # a fresh start: nothing of the crashed attempt is compared
        if path.is_dir():
            shutil.rmtree(path)
    return _spawn_once(root, timeout_s)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def _spawn_once(root: Path, timeout_s: float) -> list[dict]:
    procs = mp.start_processes(
        _worker, args=(_free_port(), str(root)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    while not procs.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail(f"distributed workers did not finish in {timeout_s} s")
    return [json.loads((root / f"results{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:LAMB's clamp")  # small models: the clamp binds for few tensors
def test_ddp_and_fsdp_match_one_process(tmp_path):
    ranks = _spawn(tmp_path)
    got = ranks[0]
    for key, cfg in jobs().items():
        ref = train(cfg.replace(**{"train.distributed": "none"}), tmp_path / "single" / key)
        rel = 1e-2 if key == "fsdp_muon" else 1e-5
        assert got[key]["losses"] == pytest.approx(ref["losses"], rel=rel), key
        assert got[key]["eval"] == pytest.approx(ref["final_eval_loss"], rel=rel), key
        assert ranks[1][key] == got[key]  # every rank reports the global numbers
        # only rank 0 writes; its per-layer diagnostics are the single process's
        assert not (tmp_path / key / "rank1").exists()
        dist_rec = _records(tmp_path / key / "rank0" / "metrics.jsonl")
        ref_rec = _records(tmp_path / "single" / key / "metrics.jsonl")
        for a, b in zip(dist_rec, ref_rec):
            assert a.keys() == b.keys()
            ups = [k for k in a if k.startswith("update/")]
            assert [a[k] for k in ups] == pytest.approx([b[k] for k in ups], rel=rel), key
    single = build(jobs()["fsdp"]).parameterization.param_groups
    assert [g["name"] for g in got["groups"]] == [g["name"] for g in single]
    assert [g["lr"] for g in got["groups"]] == [g["lr"] for g in single]
    assert [g["param_names"] for g in got["groups"]] == [g["param_names"] for g in single]
    for g in got["groups"]:  # each rank holds half the rows of every parameter
        full = {n: p.shape[0] for n, p in build(jobs()["fsdp"]).model.named_parameters()}
        assert g["rows"] == [full[n] // WORLD for n in g["param_names"]]


def test_clipping_is_active_in_the_parity_config():
    """With SGD (Adam is nearly blind to a global rescaling) halving the clip threshold moves
    the loss by far more than the parity tolerance, so the fsdp_sgd parity job would catch
    ranks clipping by a wrong (e.g. their local) gradient norm."""
    on = train(tiny(**SGD, **FSDP_SHORT))["losses"]
    half = train(tiny(**SGD, **FSDP_SHORT, **{"train.grad_clip": 0.05}))["losses"]
    assert on[0] == half[0] and on[3] != pytest.approx(half[3], rel=1e-3)


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, {"train.distributed": "none"}, "processes were"),
        ({}, {"train.distributed": "ddp"}, "needs a launcher"),
        ({"WORLD_SIZE": "3", "RANK": "0"}, {}, "does not split evenly"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, {"optimizer.name": "sophia"}, "curvature"),
        (
            {"WORLD_SIZE": "2", "RANK": "0"},
            {"train.distributed": "fsdp", "optimizer.name": "adafactor"},
            "sharded parameters",
        ),
    ],
)
def test_bad_launches_are_config_errors(monkeypatch, env, overrides, message):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        distributed.start(tiny(**overrides))


def test_single_process_by_default():
    ctx = distributed.start(tiny())
    assert (ctx.mode, ctx.world_size, ctx.is_main, ctx.owns_group) == ("none", 1, True, False)
    x = torch.arange(8).reshape(4, 2)
    assert ctx.local_batch(x, x)[0] is x


def test_rank_slices_partition_the_global_batch():
    x_BxT = torch.arange(12).reshape(6, 2)
    parts = [
        distributed.Context("ddp", rank=r, world_size=3).local_batch(x_BxT, x_BxT)[0]
        for r in range(3)
    ]
    assert torch.equal(torch.cat(parts), x_BxT)


def test_cuda_without_gpu_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no GPU"):
        distributed.start(tiny(**{"train.device": "cuda"}))


# DDP checkpoints: every rank writes its part of checkpoint-<steps> (torch.distributed.checkpoint)
CKPT = {"train.distributed": "ddp", "train.checkpoint_every": 3}
KILL_AFTER = 7  # rank 0 dies once step 7 is logged: checkpoint-00000006 is the latest


def _checkpoint_worker(rank: int, port: int, root: str, phase: str, mode: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    cfg = tiny(**{**CKPT, "train.distributed": mode})
    if phase == "resume":
        steps: list[int] = []  # rank 0's: the steps this attempt trains
        s = train(cfg, Path(root) / "cut", progress=lambda record: steps.append(record["step"]))
        Path(root, f"resumed{rank}.json").write_text(json.dumps([s["losses"], steps]))
    else:
        s = train(cfg, Path(root) / "whole")
        Path(root, f"whole{rank}.json").write_text(json.dumps(s["losses"]))

        def die(record: dict) -> None:  # called on rank 0
            if record["step"] == KILL_AFTER:
                os._exit(1)  # the launcher then ends rank 1, as torchrun does

        train(cfg, Path(root) / "cut", progress=die)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_run_killed_and_resumed_under_torchrun_gives_bitwise_equal_losses(tmp_path, mode):
    for phase in ("whole_then_killed", "resume"):
        args = (_free_port(), str(tmp_path), phase, mode)
        procs = mp.start_processes(_checkpoint_worker, args=args, nprocs=WORLD, join=False)
        deadline = time.monotonic() + 240
        try:
            while not procs.join(timeout=1.0):
                assert time.monotonic() < deadline, f"{phase}: workers did not finish"
        except mp.ProcessExitedException as e:
            assert phase != "resume" and e.exit_code == 1 and e.error_index == 0, e
        if phase != "resume":
            names = sorted(p.name for p in (tmp_path / "cut").iterdir())
            assert "checkpoint-00000006" in names and "checkpoint-00000003" not in names, names
    whole = json.loads((tmp_path / "whole0.json").read_text())
    assert len(whole) == 10
    for rank in range(WORLD):
        losses, steps = json.loads((tmp_path / f"resumed{rank}.json").read_text())
        assert losses == whole
        assert steps == (list(range(6, 10)) if rank == 0 else [])  # from the checkpoint on
    metrics = [(tmp_path / d / "metrics.jsonl").read_text() for d in ("whole", "cut")]
    assert metrics[0] == metrics[1]  # every record once, bitwise
    assert [p.name for p in (tmp_path / "cut").glob("*checkpoint*")] == []  # done: removed
