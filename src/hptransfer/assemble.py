"""config -> the parts of a run: model, roles, parameterization, optimizer, corpus, loss.

Every command that builds a run (train, coord-check, the alignment analysis, the rules table,
sweeps counting parameters, the benchmarks) builds it here, so one config always gives the same
model with the same initialization. The model is a built-in one (model.name) or the user's own
(model.factory, with the optional model.loss and model.batch hooks; docs/custom-models.md).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hptransfer import data as data_mod
from hptransfer.config import ConfigError, RunConfig, load_callable
from hptransfer.models import build_model, hidden_depth
from hptransfer.optim import build_optimizer
from hptransfer.optim.lamb import ClampWarning, clamp_warning
from hptransfer.param.apply import Parameterization, parameterize, scale_depth
from hptransfer.param.detect import Scaling, check_stacking, detect_scaling
from hptransfer.param.init import at_base_width, measure_init
from hptransfer.param.roles import RoleTable, roles_from_factory
from hptransfer.param.rules import K_SWITCHES, make_rule, measured_alignment

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.float32}
"""Parameter dtype per ``train.dtype`` (bfloat16 keeps float32 weights and autocasts)."""


#: torch CPU capabilities without bf16 matmul kernels: bf16 matmuls fall back to scalar code, at
#: 0.3-0.6 GFLOP/s against 8.5 for float32 at n = 512 on a 2-core AVX2 machine (about 20x
#: slower; the width-512 nanodo step about 100x)
SLOW_BF16_CPUS = ("AVX2", "DEFAULT", "NO AVX")


def check_bf16(cfg: RunConfig) -> None:
    """Warn when train.dtype = bfloat16 runs on a CPU whose torch build has no bf16 matmul
    kernel for it (SLOW_BF16_CPUS): there bf16 is far slower than float32, not faster."""
    cap = torch.backends.cpu.get_cpu_capability()
    if cfg.train.dtype == "bfloat16" and cfg.train.device == "cpu" and cap in SLOW_BF16_CPUS:
        warnings.warn(
            f"train.dtype = bfloat16: torch has no bf16 matmul kernel for this CPU (capability "
            f"{cap}), so bf16 runs many times slower than float32 here; use "
            "train.dtype = float32",
            stacklevel=2,
        )


Loss = Callable[[nn.Module, Any, Any], torch.Tensor]
"""loss(model, inputs, targets) -> the mean loss of a batch (a scalar tensor)."""


@dataclass
class Setup:
    """Everything a run is built from; shared by train, coord-check and the benchmarks."""

    model: nn.Module
    roles: RoleTable
    parameterization: Parameterization
    optimizer: torch.optim.Optimizer
    corpus: data_mod.Corpus
    loss: Loss
    """The run's loss: next-token cross-entropy, or model.loss's."""
    batches: Any
    """``.get(step) -> (inputs, targets)``: the token pipeline's, or model.batch's."""
    eval_set: list[tuple[Any, Any]]
    """The fixed evaluation batches (train.eval_batches of them)."""


def model_factory(cfg: RunConfig, vocab_size: int | None = None) -> Callable[[int], nn.Module]:
    """width -> the model ``cfg`` describes at that width (roles compare two widths)."""
    m = cfg.model
    vocab_size = vocab_size or data_mod.config_vocab_size(cfg.data)
    if m.factory:
        return _user_factory(load_callable(m.factory, "model.factory"), m.depth, vocab_size)
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


def _user_factory(
    fn: Callable[..., Any], depth: int, vocab_size: int
) -> Callable[[int], nn.Module]:
    """model.factory's callable as width -> module: depth= and vocab_size= are passed when its
    signature accepts them (by name or **kwargs); what it returns must be an nn.Module."""
    params: list[inspect.Parameter] = []
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a callable without a signature: the width alone
        pass
    names = {p.name for p in params}
    any_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    kw = {k: v for k, v in (("depth", depth), ("vocab_size", vocab_size)) if k in names or any_kw}

    def make(width: int) -> nn.Module:
        model = fn(width, **kw)
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model.factory: {getattr(fn, '__name__', fn)}({width}) returned a "
                f"{type(model).__name__}, not a torch.nn.Module"
            )
        return model

    return make


def _switch_on(cfg: RunConfig, switch: str) -> bool:
    """Whether [K]'s ``switch`` (one of rules.K_SWITCHES) is on in ``param.k_switches``."""
    code = cfg.param.k_switches
    return bool(code) and code[K_SWITCHES.index(switch)] == "1"


def run_roles(
    cfg: RunConfig,
    factory: Callable[[int], nn.Module],
    cpu_model: Callable[[int], nn.Module] | None = None,
) -> RoleTable:
    """The roles table of ``cfg``'s model (``factory`` at model.width against param.base_width),
    from how one batch is used (`trace.trace_uses`): model.batch's first training inputs, else a
    sequence of token ids. ``cpu_model``: the models a trace on the CPU runs (`set_up_models`;
    default: new builds)."""
    p = cfg.param
    return roles_from_factory(
        factory,
        cfg.model.width,
        p.base_width,
        overrides=p.overrides,
        tied=p.tied,
        example=example_input(cfg),
        cpu_model=cpu_model,
    )


def set_up_models(
    factory: Callable[[int], nn.Module], model: nn.Module, width: int
) -> Callable[[int], nn.Module]:
    """width -> the model the set-up measures there, each built once: ``model`` (the run's own,
    just drawn at ``width``) and, at any other width, ``factory``'s model drawn from the RNG
    state right after ``model`` (under a forked RNG, so the run's stream is unchanged): the
    base-width model of the model anchor's `measure_init` and of a trace on the CPU."""
    after = torch.random.get_rng_state()
    built = {width: model}

    def get(w: int) -> nn.Module:
        if w not in built:
            with torch.random.fork_rng(devices=[]):
                torch.random.set_rng_state(after)
                built[w] = factory(w)
        return built[w]

    return get


def example_input(cfg: RunConfig) -> Any:
    """One input of ``cfg``'s model for set-up measurements: model.batch's first training
    inputs, else a sequence of token ids."""
    if cfg.model.batch:
        batch_fn = load_callable(cfg.model.batch, "model.batch")
        return HookBatches(batch_fn, cfg.train.batch_size, cfg.seed).get(0)[0]
    return torch.zeros((1, cfg.train.seq_len), dtype=torch.long)


def model_scaling(
    cfg: RunConfig, factory: Callable[[int], nn.Module], model: nn.Module | None = None
) -> list[Scaling]:
    """The width-dependent constants model.factory's model applies itself (`detect_scaling` at
    param.base_width and model.width, under a forked RNG); none for the built-in models, which
    apply only what the config asks for. ``model``: the run's own model as built at model.width
    from cfg.seed, measured there instead of a new build."""
    if not cfg.model.factory or cfg.model.width == cfg.param.base_width:
        return []
    x = example_input(cfg)
    widths = (cfg.param.base_width, cfg.model.width)
    built = {} if model is None else {cfg.model.width: model}
    return detect_scaling(factory, lambda m: m(x), widths, seed=cfg.seed, built=built)


def solver_depth(cfg: RunConfig, roles: RoleTable | None = None) -> int:
    """The LR-exponent solver's chain length (`solve_c`'s n_hidden): the built-in model's
    (`models.hidden_depth`); for model.factory's model, its count of hidden matrices (from
    ``roles``, else inferred): an upper bound, as parallel matrices count too. Only a measured
    alignment with omega > 1/2 depends on it."""
    if not cfg.model.factory:
        return hidden_depth(cfg.model.name, cfg.model.depth)
    roles = roles if roles is not None else run_roles(cfg, model_factory(cfg))
    return max(1, len(roles.by_role("hidden")))


def run_anchor(cfg: RunConfig) -> str:
    """param.anchor, with auto resolved: model for model.factory's model, else relative."""
    if cfg.param.anchor != "auto":
        return cfg.param.anchor
    return "model" if cfg.model.factory else "relative"


def spec_options(cfg: RunConfig) -> dict[str, Any]:
    """The per-parameter table's options of ``cfg`` (`compute_specs` / `parameterize`
    keywords): one place, so `hptransfer rules --model` prints what a run applies."""
    p, o = cfg.param, cfg.optimizer
    return {
        "eps": o.eps,
        "weight_decay": o.weight_decay,
        "wd_mode": o.wd_mode,
        "anchor": run_anchor(cfg),
        "form": p.form,
        "eps_mode": p.eps_mode,
        "init_scale": {"input": p.init_input, "hidden": p.init_hidden, "output": p.init_output},
        "init_overrides": p.init_overrides,
    }


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
        n_hidden=solver_depth(cfg, roles),
    )
    par = parameterize(
        model,
        roles,
        rule,
        lr=o.lr,
        **spec_options(cfg),
        init=init,
        generator=generator,
        base_init=base_init,
    )
    if p.depth_exponent:  # residual-branch multipliers (depth_base / depth)^p
        d = (cfg.model.depth, p.depth_base, p.depth_exponent)
        scale_depth(par, model, *d, branches=p.depth_branches.split(","), scale_lr=p.depth_lr)
    return par


def build(cfg: RunConfig, corpus: data_mod.Corpus | None = None) -> Setup:
    """Model, roles, parameterization, optimizer, loss and batches for ``cfg`` (seeded by
    ``cfg.seed``)."""
    check_bf16(cfg)
    corpus = corpus if corpus is not None else data_mod.load_corpus(cfg.data)
    torch.manual_seed(cfg.seed)
    factory = model_factory(cfg, corpus.vocab_size)
    model = factory(cfg.model.width)
    models = set_up_models(factory, model, cfg.model.width)  # each measured model built once
    found = model_scaling(cfg, factory, model)  # on the model as built, before any change
    roles = run_roles(cfg, factory, models)
    base_init = None
    if run_anchor(cfg) == "model" and not at_base_width(roles):  # its own init at base width
        base_init = measure_init(models(cfg.param.base_width))
    model = model.to(DTYPES[cfg.train.dtype])
    gen = torch.Generator().manual_seed(cfg.seed)
    par = parameterize_run(cfg, model, roles, generator=gen, base_init=base_init)
    check_stacking(found, roles, par.rule)  # warns where the rule stacks
    o = cfg.optimizer
    optimizer = build_optimizer(o.name, par.param_groups, **o.hparams())
    if o.name == "lamb":  # loud where the clamped rule's regime does not hold
        message = clamp_warning(optimizer, {id(p): n for n, p in model.named_parameters()})
        if message is not None:
            warnings.warn(message, ClampWarning, stacklevel=2)
    batches, eval_set = run_batches(cfg, corpus)
    return Setup(model, roles, par, optimizer, corpus, run_loss(cfg), batches, eval_set)


def builds(
    cfg: RunConfig, widths: Sequence[int], seeds: Sequence[int]
) -> Iterator[tuple[RunConfig, Setup]]:
    """``cfg``'s run at every seed and width (seeds outer), each built as :func:`build` builds
    it, from one read of the corpus; each parameterization's hooks come off once the caller
    moves on (the probes' loop over widths)."""
    corpus = data_mod.load_corpus(cfg.data)
    for seed in seeds:
        for width in widths:
            run_cfg = cfg.replace(**{"model.width": int(width), "seed": int(seed)}).validate()
            s = build(run_cfg, corpus)
            try:
                yield run_cfg, s
            finally:
                s.parameterization.remove()


def run_batches(cfg: RunConfig, corpus: data_mod.Corpus) -> tuple[Any, list[tuple[Any, Any]]]:
    """The training batches (``.get(step)``) and the fixed evaluation batches of ``cfg``."""
    t = cfg.train
    if not cfg.model.batch:
        return (
            data_mod.Batches(corpus.train, t.batch_size, t.seq_len, cfg.seed),
            data_mod.eval_batches(corpus.eval, t.eval_batches, t.batch_size, t.seq_len),
        )
    hook = HookBatches(load_callable(cfg.model.batch, "model.batch"), t.batch_size, cfg.seed)
    return hook, [hook.get(i, "eval") for i in range(t.eval_batches)]


class HookBatches:
    """model.batch's function as the token pipeline's ``Batches``: ``get(step)`` calls
    ``fn(step, batch_size=B, seed=seed, split="train")`` and checks it made a pair."""

    def __init__(self, fn: Callable[..., Any], batch_size: int, seed: int) -> None:
        self.fn, self.batch_size, self.seed = fn, batch_size, seed

    def get(self, step: int, split: str = "train") -> tuple[Any, Any]:
        batch = self.fn(step, batch_size=self.batch_size, seed=self.seed, split=split)
        if not (isinstance(batch, tuple) and len(batch) == 2):
            raise ConfigError(
                f"model.batch: expected an (inputs, targets) pair, got {type(batch).__name__}"
            )
        return batch


def run_loss(cfg: RunConfig) -> Loss:
    """``cfg``'s loss(model, inputs, targets): model.loss's fn(model, (inputs, targets)), or
    next-token cross-entropy; under bfloat16 autocast when train.dtype is bfloat16."""
    autocast = cfg.train.dtype == "bfloat16"
    if not cfg.model.loss:
        return lambda model, x, y: loss_fn(model, x, y, autocast)
    hook = load_callable(cfg.model.loss, "model.loss")

    def loss(model: nn.Module, x: Any, y: Any) -> torch.Tensor:
        device = x.device.type if isinstance(x, torch.Tensor) else "cpu"
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = hook(model, (x, y))
        return out.float()

    return loss


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on a batch (bfloat16 autocast if asked).

    The model maps token ids (B, T) to logits (B, T, V), or to an output with ``.logits``
    (transformers' models) holding them."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    logits_BxTxV = getattr(out, "logits", out)
    if not isinstance(logits_BxTxV, torch.Tensor) or logits_BxTxV.dim() != 3:
        shape = getattr(logits_BxTxV, "shape", type(logits_BxTxV).__name__)
        raise ConfigError(
            f"the model returned {shape}, not (B, T, V) logits for (B, T) token ids: a model "
            "that is not a causal LM needs model.loss (docs/custom-models.md)"
        )
    return F.cross_entropy(logits_BxTxV.float().flatten(0, 1), y.flatten())
