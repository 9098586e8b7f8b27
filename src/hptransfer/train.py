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
from hptransfer.config import RunConfig
from hptransfer.models import build_model
from hptransfer.optim import build_optimizer
from hptransfer.optim.diagnostics import optimizer_diagnostics
from hptransfer.param.apply import Parameterization, parameterize
from hptransfer.param.roles import RoleTable, roles_from_factory
from hptransfer.param.rules import make_rule
from hptransfer.store import write_json

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.float32}


@dataclass
class Setup:
    """Everything a run is built from; shared by train, coord-check and the benchmarks."""

    model: nn.Module
    roles: RoleTable
    parameterization: Parameterization
    optimizer: torch.optim.Optimizer
    corpus: data_mod.Corpus


def model_factory(cfg: RunConfig) -> Callable[[int], nn.Module]:
    m = cfg.model
    return lambda width: build_model(
        m.name,
        width=width,
        depth=m.depth,
        vocab_size=256,
        seq_len=cfg.train.seq_len,
        head_dim=m.head_dim,
        attn_scale=m.attn_scale,
    )


def build(cfg: RunConfig, corpus: data_mod.Corpus | None = None) -> Setup:
    """Model, roles, parameterization and optimizer for ``cfg`` (seeded by ``cfg.seed``)."""
    p, o = cfg.param, cfg.optimizer
    corpus = corpus if corpus is not None else data_mod.load_text(cfg.data.path or None)
    torch.manual_seed(cfg.seed)
    factory = model_factory(cfg)
    model = factory(cfg.model.width).to(DTYPES[cfg.train.dtype])
    roles = roles_from_factory(
        factory, cfg.model.width, p.base_width, overrides=p.overrides, tied=p.tied
    )
    rule = make_rule(
        p.name,
        o.name,
        p.alignment,
        lr_exponents=p.lr_exponents,
        gammas={
            "input": p.gamma_input,
            "hidden": p.gamma_hidden,
            "output": p.gamma_output,
            "vector": p.gamma_vector,
        },
        options=o.options,
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
    upd = torch.stack(torch._foreach_norm(deltas)).double()
    wts = torch.stack(torch._foreach_norm(after)).double().clamp_min(1e-30)
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
    s = build(cfg)
    model, opt = s.model, s.optimizer
    autocast = t.dtype == "bfloat16"
    batches = data_mod.Batches(s.corpus.train, t.batch_size, t.seq_len, cfg.seed)
    eval_set = data_mod.eval_batches(s.corpus.eval, t.eval_batches, t.batch_size, t.seq_len)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg))
    refresh = getattr(opt, "refresh_curvature", None)  # Sophia's Hessian estimate
    named = dict(model.named_parameters())

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.to_dict())
        metrics_file = (out / "metrics.jsonl").open("w")
    losses: list[float] = []
    evals: list[tuple[int, float]] = []
    status, loss0 = "ok", None
    for step in range(t.steps):
        x, y = batches.get(step)
        if refresh is not None and step % opt.curvature_interval == 0:
            refresh(lambda x=x: model(x), y)
        loss = loss_fn(model, x, y, autocast)
        loss_value = loss.item()
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
            record.update(optimizer_diagnostics(opt, {p: n for n, p in named.items()}))
            record["eval_loss"] = evaluate(model, eval_set, autocast)
            evals.append((step + 1, record["eval_loss"]))
            if not math.isfinite(record["eval_loss"]):
                status = "diverged"
        if out is not None:
            metrics_file.write(json.dumps(record) + "\n")
        if progress is not None:
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
    s.parameterization.remove()
    return summary
