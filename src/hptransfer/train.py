"""train(config) -> summary: one readable loop.

A run that produces a non-finite loss, or a loss above ``train.diverge_factor`` times its
step-0 loss, stops with status "diverged": divergence is a result (LR sweeps need that edge),
never an exception.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hptransfer import data as data_mod
from hptransfer import distributed
from hptransfer.alignment import AlignmentProbe
from hptransfer.config import RunConfig
from hptransfer.models import build_model
from hptransfer.optim import build_optimizer
from hptransfer.optim.diagnostics import optimizer_diagnostics
from hptransfer.param.apply import Parameterization, parameterize, scale_depth
from hptransfer.param.roles import RoleTable, roles_from_factory
from hptransfer.param.rules import K_SWITCHES, make_rule, measured_alignment
from hptransfer.store import write_json
from hptransfer.trackers import Trackers, open_trackers

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.float32}


@dataclass
class Setup:
    """Everything a run is built from; shared by train, coord-check and the benchmarks."""

    model: nn.Module
    roles: RoleTable
    parameterization: Parameterization
    optimizer: torch.optim.Optimizer
    corpus: data_mod.Corpus


def model_factory(cfg: RunConfig, vocab_size: int | None = None) -> Callable[[int], nn.Module]:
    m = cfg.model
    vocab_size = vocab_size or data_mod.config_vocab_size(cfg.data)
    return lambda width: build_model(
        m.name,
        width=width,
        depth=m.depth,
        vocab_size=vocab_size,
        kv_group=m.kv_group,
        seq_len=cfg.train.seq_len,
        head_dim=m.head_dim,
        attn_scale="linear" if _switch_on(cfg, "attn") else m.attn_scale,
    )


def _switch_on(cfg: RunConfig, switch: str) -> bool:
    """Whether [K]'s ``switch`` (one of rules.K_SWITCHES) is on in ``param.k_switches``."""
    code = cfg.param.k_switches
    return bool(code) and code[K_SWITCHES.index(switch)] == "1"


def build(cfg: RunConfig, corpus: data_mod.Corpus | None = None) -> Setup:
    """Model, roles, parameterization and optimizer for ``cfg`` (seeded by ``cfg.seed``)."""
    p, o = cfg.param, cfg.optimizer
    corpus = corpus if corpus is not None else data_mod.load_corpus(cfg.data)
    torch.manual_seed(cfg.seed)
    factory = model_factory(cfg, corpus.vocab_size)
    model = factory(cfg.model.width).to(DTYPES[cfg.train.dtype])
    roles = roles_from_factory(
        factory, cfg.model.width, p.base_width, overrides=p.overrides, tied=p.tied
    )
    rule = make_rule(
        p.name,
        o.name,
        measured_alignment(p.alignment_values) if p.alignment == "measured" else p.alignment,
        lr_exponents=p.lr_exponents,
        gammas={
            "input": p.gamma_input,
            "hidden": p.gamma_hidden,
            "output": p.gamma_output,
            "vector": p.gamma_vector,
        },
        options=o.options,
        k_switches=p.k_switches,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    par = parameterize(
        model,
        roles,
        rule,
        lr=o.lr,
        eps=o.eps,
        weight_decay=o.weight_decay,
        wd_mode=o.wd_mode,
        anchor=p.anchor,
        form=p.form,
        eps_mode=p.eps_mode,
        init_scale={"input": p.init_input, "hidden": p.init_hidden, "output": p.init_output},
        generator=gen,
    )
    if p.depth_exponent:  # residual-branch multipliers (depth_base / depth)^p
        d = (cfg.model.depth, p.depth_base, p.depth_exponent)
        scale_depth(par, model, *d, branches=p.depth_branches.split(","), scale_lr=p.depth_lr)
    optimizer = build_optimizer(o.name, par.param_groups, **o.hparams())
    return Setup(model, roles, par, optimizer, corpus)


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


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits_BxTxV = model(x)
    return F.cross_entropy(logits_BxTxV.float().flatten(0, 1), y.flatten())


@torch.no_grad()
def update_ratios(named: dict[str, torch.Tensor], before: list[torch.Tensor]) -> dict[str, float]:
    """Per layer: RMS of this step's update divided by RMS of the weight ("update/NAME")."""
    names = list(named)
    after = list(named.values())
    deltas = torch._foreach_sub(after, before)
    upd = distributed.full(torch.stack(torch._foreach_norm(deltas))).double()  # fsdp: DTensors
    wts = distributed.full(torch.stack(torch._foreach_norm(after))).double().clamp_min(1e-30)
    ratios = (upd / wts).tolist()  # the sqrt(numel) of the two RMS cancel
    return {f"update/{n}": r for n, r in zip(names, ratios)}


@torch.no_grad()
def evaluate(model: nn.Module, batches: list, autocast: bool) -> float:
    was_training = model.training
    model.eval()
    total = sum(loss_fn(model, x, y, autocast).item() for x, y in batches)
    model.train(was_training)
    return total / len(batches)


def train(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train one run; write config, metrics.jsonl and summary.json under ``out_dir`` if given.

    Returns the summary: status ("ok" or "diverged"), final and best eval loss, steps, tokens,
    wall time, and the per-step train losses.
    """
    t = cfg.train
    start = time.perf_counter()
    ctx = distributed.start(cfg)  # one process, or this rank of a torchrun job
    # a bpe tokenizer lives in out_dir: rank 0 trains and saves it, the other ranks load it
    s = build(cfg, ctx.main_first(lambda: data_mod.load_corpus(cfg.data, out_dir)))
    model = s.model  # evaluation and diagnostics; step_model (ddp-wrapped / compiled) trains
    groups = s.parameterization.param_groups
    step_model, opt = distributed.prepare(model, s.optimizer, groups, cfg, ctx)
    autocast = t.dtype == "bfloat16"
    batches = data_mod.Batches(s.corpus.train, t.batch_size, t.seq_len, cfg.seed)
    eval_set = data_mod.eval_batches(s.corpus.eval, t.eval_batches, t.batch_size, t.seq_len)
    eval_set = [ctx.local_batch(x, y) for x, y in eval_set]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg))
    refresh = getattr(opt, "refresh_curvature", None)  # Sophia's Hessian estimate
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
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.to_dict())
        metrics_file = (out / "metrics.jsonl").open("w")
    losses: list[float] = []
    evals: list[tuple[int, float]] = []
    status, loss0 = "ok", None
    for step in range(t.steps):
        x, y = ctx.local_batch(*batches.get(step))
        if refresh is not None and step % opt.curvature_interval == 0:
            refresh(lambda x=x: step_model(x), y)
        loss = loss_fn(step_model, x, y, autocast)
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
        before = [p.detach().clone() for p in named.values()] if eval_step else None
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
            record.update(optimizer_diagnostics(cfg.optimizer.name, opt, names, distributed.full))
            record["eval_loss"] = ctx.mean(evaluate(model, eval_set, autocast))
            evals.append((step + 1, record["eval_loss"]))
            if not math.isfinite(record["eval_loss"]):
                status = "diverged"
        if probe is not None and (step + 1) % t.align_every == 0:
            record.update(probe.measure())
        if out is not None:
            metrics_file.write(json.dumps(record) + "\n")
        tracker.log(record)
        if progress is not None and ctx.is_main:
            progress(record)
        if status == "diverged":
            break
    if out is not None:
        metrics_file.close()
    finite = [v for _, v in evals if math.isfinite(v)]
    summary = {
        "run_id": cfg.run_id(),
        "status": status,
        "final_eval_loss": evals[-1][1] if status == "ok" and evals else None,
        "best_eval_loss": min(finite) if finite else None,
        "final_train_loss": losses[-1] if losses else None,
        "steps": len(losses),
        "tokens": len(losses) * t.batch_size * t.seq_len,
        "wall_time_s": round(time.perf_counter() - start, 3),
        "n_params": sum(p.numel() for p in model.parameters()),
        "corpus_sha256": s.corpus.sha256,
        "losses": losses,
    }
    if out is not None:
        write_json(out / "summary.json", summary)
    tracker.close(summary)
    s.parameterization.remove()
    distributed.finish(ctx)
    return summary
