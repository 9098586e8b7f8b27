"""train(config) -> summary: one readable loop.

A run that produces a non-finite train loss, a train loss above ``train.diverge_factor`` times
its step-0 loss, or a non-finite eval loss stops with status "diverged": divergence is a result
(LR sweeps need that edge), never an exception. The model, parameterization and optimizer come
from `hptransfer.assemble`; the run directory is written through `hptransfer.store.RunDir`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from hptransfer import checkpoint, distributed, store
from hptransfer import data as data_mod
from hptransfer.assemble import Loss, build
from hptransfer.config import RunConfig
from hptransfer.optim.diagnostics import optimizer_diagnostics
from hptransfer.probes.alignment import AlignmentProbe
from hptransfer.probes.updates import update_ratios
from hptransfer.trackers import Trackers, open_trackers


def lr_schedule(cfg: RunConfig) -> Callable[[int], float]:
    """LR multiplier at each step: linear warmup, then constant, cosine or warmup-stable-decay."""
    t = cfg.train
    steps, warm, floor = t.steps, t.warmup_steps, t.final_lr_frac

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if t.schedule == "constant":
            return 1.0
        if t.schedule == "cosine":
            progress = (step - warm) / max(1, steps - warm)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        decay_start = steps - int(t.decay_frac * steps)  # wsd
        if step < decay_start:
            return 1.0
        return 1 - (1 - floor) * (step - decay_start + 1) / max(1, steps - decay_start)

    return factor


@torch.no_grad()
def evaluate(model: nn.Module, batches: list, loss: Loss) -> float:
    was_training = model.training
    model.eval()
    total = sum(loss(model, x, y).item() for x, y in batches)
    model.train(was_training)
    return total / len(batches)


def train(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train one run; with ``out_dir``, record it there as a `store.RunDir` (config.json and
    env.json first, a metrics.jsonl line per step, summary.json at the end). With
    ``train.checkpoint_every`` / ``train.checkpoint_minutes``, a checkpoint every that many
    steps / minutes (checkpoint.pt; under torchrun a checkpoint-<steps> directory written by
    every rank); when ``out_dir`` holds one, the run continues from it
    (`hptransfer.checkpoint`) with bitwise-equal losses. Trackers receive each step once: a
    resumed run sends them only the steps its killed attempt had not logged.

    Returns the summary (`store.Summary` as a dict): status ("ok" or "diverged"), final and
    best eval loss, steps, tokens, wall time, and the per-step train losses.
    """
    t = cfg.train
    start = time.perf_counter()
    ctx = distributed.start(cfg)  # one process, or this rank of a torchrun job
    # a bpe tokenizer lives in out_dir: rank 0 trains and saves it, the other ranks load it
    s = build(cfg, ctx.main_first(lambda: data_mod.load_corpus(cfg.data, out_dir)))
    model = s.model  # evaluation and diagnostics; step_model (ddp-wrapped / compiled) trains
    groups = s.parameterization.param_groups
    step_model, opt = distributed.prepare(model, s.optimizer, groups, cfg, ctx)
    batches = s.batches
    eval_set = [ctx.local_batch(x, y) for x, y in s.eval_set]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg))
    refresh = getattr(opt, "refresh_curvature", None)  # Sophia's Hessian estimate
    curvature_interval: int = getattr(opt, "curvature_interval", 1)
    named = dict(model.named_parameters())
    names = {p: n for n, p in named.items()}
    # alignment exponents (parameterizations.md §3) on the step-0 batch, every align_every steps
    probe = None
    if t.align_every:
        x_align = ctx.local_batch(*batches.get(0))[0][: t.align_batch]
        probe = AlignmentProbe(model, lambda: model(x_align))

    out = Path(out_dir) if out_dir is not None and ctx.is_main else None
    # TensorBoard / W&B copies of every record; off by default. Opened first: a missing extra
    # is a ConfigError before anything of the run is written.
    tracker = open_trackers(cfg, out) if ctx.is_main else Trackers([])
    # every rank reads and writes the checkpoints (a collective under torchrun); rank 0 alone
    # writes the rest of the run directory (``run``)
    saves = store.RunDir(out_dir) if out_dir is not None else None
    run = saves if ctx.is_main else None
    at = checkpoint.Position()
    sent = 0  # records the trackers received before this attempt
    saved = checkpoint.load(saves, ctx) if saves is not None else None
    if saved is not None:
        at = checkpoint.restore(saved[0], cfg.run_id(), model, opt, sched, saved[1])
        start -= at.elapsed_s
    if run is not None:
        env = store.environment(cfg.seed, s.corpus.sha256, device=str(ctx.device))
        if saved is None:
            run.create(cfg.to_dict(), env)
        else:
            sent = run.resume(at.steps, env)
    losses, evals, loss0 = at.losses, at.evals, at.loss0
    every, minutes = t.checkpoint_every, t.checkpoint_minutes
    last_save = time.perf_counter()
    status: store.Status = "ok"
    try:
        for step in range(at.steps, t.steps):
            x, y = ctx.local_batch(*batches.get(step))
            if refresh is not None and step % curvature_interval == 0:
                refresh(lambda x=x: step_model(x), y)
            loss = s.loss(step_model, x, y)
            loss_value = ctx.mean(loss)  # the global-batch loss, the same on every rank
            loss0 = loss_value if loss0 is None else loss0
            if not math.isfinite(loss_value) or loss_value > t.diverge_factor * loss0:
                status = "diverged"
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            eval_step = (step + 1) % t.eval_every == 0 or step + 1 == t.steps
            before = [p.detach().clone() for p in named.values()] if eval_step else []
            opt.step()
            sched.step()
            losses.append(loss_value)
            record = {
                "step": step,
                "loss": loss_value,
                "lr_factor": sched.get_last_lr()[0] / (opt.param_groups[0]["initial_lr"] or 1.0),
            }
            if eval_step:  # per-layer diagnostics ride along with the evals
                record.update(update_ratios(named, before))
                record.update(
                    optimizer_diagnostics(cfg.optimizer.name, opt, names, distributed.full)
                )
                record["eval_loss"] = ctx.mean(evaluate(model, eval_set, s.loss))
                evals.append((step + 1, float(record["eval_loss"])))
                if not math.isfinite(record["eval_loss"]):
                    status = "diverged"
            if probe is not None and (step + 1) % t.align_every == 0:
                record.update(probe.measure())
            if run is not None:
                run.log(record)
            if step >= sent:
                tracker.log(record)
            if progress is not None and ctx.is_main:
                progress(record)
            if status == "diverged":
                break
            due = bool(every) and (step + 1) % every == 0
            if minutes:  # rank 0's clock decides for every rank
                due = ctx.agree(due or time.perf_counter() - last_save >= 60 * minutes)
            if saves is not None and due and step + 1 < t.steps:
                now = time.perf_counter()
                at = checkpoint.Position(step + 1, losses, evals, loss0, now - start)
                state = checkpoint.capture(cfg.run_id(), model, opt, sched, at)
                checkpoint.save(saves, ctx, state)
                last_save = time.perf_counter()
    except BaseException:
        if run is not None:
            run.close()  # metrics.jsonl holds every record logged; a retry resumes or restarts
        raise
    finite = [v for _, v in evals if math.isfinite(v)]
    summary = store.Summary(
        run_id=cfg.run_id(),
        status=status,
        final_eval_loss=evals[-1][1] if status == "ok" and evals else None,
        best_eval_loss=min(finite) if finite else None,
        final_train_loss=losses[-1] if losses else None,
        steps=len(losses),
        tokens=len(losses) * t.batch_size * t.seq_len,
        wall_time_s=round(time.perf_counter() - start, 3),
        n_params=sum(p.numel() for p in model.parameters()),
        corpus_sha256=s.corpus.sha256,
        losses=losses,
    )
    if run is not None:
        run.finish(summary)
    tracker.close(summary.to_dict())
    s.parameterization.remove()
    distributed.finish(ctx)
    return summary.to_dict()
