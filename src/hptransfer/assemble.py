"""config -> the parts of a run: model, roles, parameterization, optimizer, corpus, loss.

Every command that builds a run (train, coord-check, the alignment analysis, the rules table,
sweeps counting parameters, the benchmarks) builds it here, so one config always gives the same
model with the same initialization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hptransfer import data as data_mod
from hptransfer.config import RunConfig
from hptransfer.models import build_model, hidden_depth
from hptransfer.optim import build_optimizer
from hptransfer.param.apply import Parameterization, parameterize, scale_depth
from hptransfer.param.init import measure_init
from hptransfer.param.roles import RoleTable, roles_from_factory
from hptransfer.param.rules import K_SWITCHES, make_rule, measured_alignment

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.float32}
"""Parameter dtype per ``train.dtype`` (bfloat16 keeps float32 weights and autocasts)."""


@dataclass
class Setup:
    """Everything a run is built from; shared by train, coord-check and the benchmarks."""

    model: nn.Module
    roles: RoleTable
    parameterization: Parameterization
    optimizer: torch.optim.Optimizer
    corpus: data_mod.Corpus


def model_factory(cfg: RunConfig, vocab_size: int | None = None) -> Callable[[int], nn.Module]:
    """width -> the model ``cfg`` describes at that width (roles compare two widths)."""
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


def run_roles(cfg: RunConfig, factory: Callable[[int], nn.Module]) -> RoleTable:
    """The roles table of ``cfg``'s model (``factory`` at model.width against param.base_width)."""
    p = cfg.param
    return roles_from_factory(
        factory, cfg.model.width, p.base_width, overrides=p.overrides, tied=p.tied
    )


def parameterize_run(
    cfg: RunConfig,
    model: nn.Module,
    roles: RoleTable,
    *,
    init: bool = True,
    generator: torch.Generator | None = None,
    base_init: dict[str, float] | None = None,
) -> Parameterization:
    """``cfg``'s rule applied to ``model``: init (unless ``init=False``), forward multipliers,
    param groups at base LR optimizer.lr, and the residual-branch depth multipliers."""
    p, o = cfg.param, cfg.optimizer
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
        n_hidden=hidden_depth(cfg.model.name, cfg.model.depth),
    )
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
        init_overrides=p.init_overrides,
        init=init,
        generator=generator,
        base_init=base_init,
    )
    if p.depth_exponent:  # residual-branch multipliers (depth_base / depth)^p
        d = (cfg.model.depth, p.depth_base, p.depth_exponent)
        scale_depth(par, model, *d, branches=p.depth_branches.split(","), scale_lr=p.depth_lr)
    return par


def build(cfg: RunConfig, corpus: data_mod.Corpus | None = None) -> Setup:
    """Model, roles, parameterization and optimizer for ``cfg`` (seeded by ``cfg.seed``)."""
    corpus = corpus if corpus is not None else data_mod.load_corpus(cfg.data)
    torch.manual_seed(cfg.seed)
    factory = model_factory(cfg, corpus.vocab_size)
    model = factory(cfg.model.width).to(DTYPES[cfg.train.dtype])
    roles = run_roles(cfg, factory)
    base_init = None
    if cfg.param.anchor == "model":  # the model's own init at base width (param.init)
        with torch.random.fork_rng(devices=[]):
            base_init = measure_init(factory(cfg.param.base_width))
    gen = torch.Generator().manual_seed(cfg.seed)
    par = parameterize_run(cfg, model, roles, generator=gen, base_init=base_init)
    o = cfg.optimizer
    optimizer = build_optimizer(o.name, par.param_groups, **o.hparams())
    return Setup(model, roles, par, optimizer, corpus)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on a batch (bfloat16 autocast if asked)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits_BxTxV = model(x)
    return F.cross_entropy(logits_BxTxV.float().flatten(0, 1), y.flatten())
