"""Fast stand-ins for hptransfer.train.train, used by the sweep tests via HPTRANSFER_TRAIN_FN.

Workers import this module by name, so it lives next to the tests (on sys.path under pytest)
and holds no tests itself.
"""

from __future__ import annotations

import errno
import json
import math
import os
import time
import uuid
from pathlib import Path

from hptransfer.config import RunConfig
from hptransfer.store import write_json

OPTIMUM_LR = 2.0**-7


def synthetic_loss(lr: float, width: int) -> float:
    """A bowl in log2(lr) with its minimum at OPTIMUM_LR; diverges 8x above it."""
    if lr > 8 * OPTIMUM_LR:
        return math.inf
    return 3.0 - 0.1 * math.log2(width) + 0.05 * (math.log2(lr / OPTIMUM_LR)) ** 2


def fake_train(cfg: RunConfig, out_dir: str | Path | None = None, progress=None) -> dict:
    """Sleeps FAKE_TRAIN_S (default 0.2 s); logs start/done lines to FAKE_TRAIN_LOG if set.

    FAKE_TRAIN_FAIL_SGD makes SGD runs raise; FAKE_DISK_FULL_SGD makes them find the disk full
    (OSError ENOSPC without a file name, as a buffered write's flush raises it).
    """
    log = os.environ.get("FAKE_TRAIN_LOG")
    token = uuid.uuid4().hex
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"event": "start", "run_id": cfg.run_id(), "token": token}) + "\n")
    if cfg.optimizer.name == "sgd" and os.environ.get("FAKE_TRAIN_FAIL_SGD"):
        raise RuntimeError("fake failure for sgd")
    if cfg.optimizer.name == "sgd" and os.environ.get("FAKE_DISK_FULL_SGD"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    time.sleep(float(os.environ.get("FAKE_TRAIN_S", "0.2")))
    loss = synthetic_loss(cfg.optimizer.lr, cfg.model.width)
    ok = math.isfinite(loss)
    summary = {
        "run_id": cfg.run_id(),
        "status": "ok" if ok else "diverged",
        "final_eval_loss": loss if ok else None,
        "best_eval_loss": loss if ok else None,
        "final_train_loss": loss if ok else None,
        "steps": cfg.train.steps if ok else 1,
        "tokens": 0,
        "wall_time_s": 0.2,
        "n_params": 0,
        "corpus_sha256": "fake",
        "losses": [],
        "token": token,
    }
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(out_dir) / "config.json", cfg.to_dict())
        write_json(Path(out_dir) / "summary.json", summary)
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"event": "done", "run_id": cfg.run_id(), "token": token}) + "\n")
    return summary


def gamma_train(cfg: RunConfig, out_dir: str | Path | None = None, progress=None) -> dict:
    """Fake train whose loss is best at gamma_input = gamma_hidden = gamma_output = 1."""
    p = cfg.param
    loss = 2.0 + sum(math.log(g) ** 2 for g in (p.gamma_input, p.gamma_hidden, p.gamma_output))
    summary = {
        "run_id": cfg.run_id(),
        "status": "ok",
        "final_eval_loss": loss,
        "best_eval_loss": loss,
        "steps": cfg.train.steps,
        "wall_time_s": 0.0,
    }
    if out_dir is not None:
        write_json(Path(out_dir) / "summary.json", summary)
    return summary


def curve_train(cfg: RunConfig, out_dir: str | Path | None = None, progress=None) -> dict:
    """A learning curve without torch: the eval loss every eval_every steps falls linearly from
    synthetic_loss + 0.5 to synthetic_loss at the last step, logged and passed to ``progress``
    as train does, so successive halving (sweep/halving.py) can stop it. Each step sleeps
    FAKE_STEP_S (default 0); FAKE_TRAIN_LOG gets start/done lines with HPTRANSFER_DEVICE."""
    from hptransfer.store import RunDir, Summary

    log = os.environ.get("FAKE_TRAIN_LOG")
    device = os.environ.get("HPTRANSFER_DEVICE", "")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"event": "start", "run_id": cfg.run_id(), "device": device,
                                "t": time.time()}) + "\n")  # fmt: skip
    final = synthetic_loss(cfg.optimizer.lr, cfg.model.width)
    t = cfg.train
    run = RunDir(out_dir) if out_dir is not None else None
    status, evals, losses = "ok", [], []
    for step in range(t.steps):
        time.sleep(float(os.environ.get("FAKE_STEP_S", "0")))
        if not math.isfinite(final):
            status = "diverged"
            break
        record = {"step": step, "loss": final + 0.5 * (1 - step / t.steps)}
        losses.append(record["loss"])
        if (step + 1) % t.eval_every == 0 or step + 1 == t.steps:
            record["eval_loss"] = final + 0.5 * (1 - (step + 1) / t.steps)
            evals.append(record["eval_loss"])
        if run is not None:
            run.log(record)
        if progress is not None:
            progress(record)
    summary = Summary(
        cfg.run_id(), status, final_eval_loss=evals[-1] if status == "ok" else None,
        best_eval_loss=min(evals, default=None), steps=len(losses), losses=losses,
    )  # fmt: skip
    if run is not None:
        run.finish(summary)
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"event": "done", "run_id": cfg.run_id(), "device": device,
                                "t": time.time()}) + "\n")  # fmt: skip
    return summary.to_dict()
