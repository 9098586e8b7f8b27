"""Speed options of the trainer: bf16 autocast, torch.compile, fused optimizer kernels."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from golden import CORPUS

from hptransfer.assemble import build, loss_fn
from hptransfer.config import RunConfig
from hptransfer.optim import build_optimizer
from hptransfer.train import train

SMALL = {
    "model.width": 64,
    "model.depth": 2,
    "model.head_dim": 16,
    "param.base_width": 32,  # multipliers != 1: the compiled forward must keep the hooks
    "optimizer.lr": 1e-2,
    "train.batch_size": 8,
    "train.seq_len": 32,
    "train.warmup_steps": 5,
    "train.eval_batches": 2,
    "data.path": str(CORPUS),
}


def small(**kw) -> RunConfig:
    return RunConfig().replace(**{**SMALL, **kw}).validate()


@pytest.mark.filterwarnings("ignore:train.dtype = bfloat16")  # on a CPU without bf16 kernels
def test_bf16_autocast_trains_within_2_percent_of_fp32():
    steps = {"train.steps": 50, "train.eval_every": 50}
    fp32 = train(small(**steps))
    bf16 = train(small(**steps, **{"train.dtype": "bfloat16"}))
    assert bf16["status"] == "ok" and bf16["losses"][-1] < 0.8 * bf16["losses"][0]
    assert bf16["losses"] != fp32["losses"]  # autocast really ran in bf16
    assert bf16["final_eval_loss"] == pytest.approx(fp32["final_eval_loss"], rel=0.02)
    last5 = [sum(s["losses"][-5:]) / 5 for s in (bf16, fp32)]
    assert last5[0] == pytest.approx(last5[1], rel=0.02)


@pytest.mark.filterwarnings("ignore:train.dtype = bfloat16")  # on a CPU without bf16 kernels
def test_bf16_matmuls_with_the_loss_in_fp32():
    s = build(small(**{"train.dtype": "bfloat16"}))
    x = torch.randint(0, 256, (2, 32))
    seen: list[torch.dtype] = []
    s.model.head.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    loss = loss_fn(s.model, x, x, autocast=True)
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32
    assert next(s.model.parameters()).dtype == torch.float32  # master weights stay fp32


@pytest.mark.parametrize("capability", ["AVX2", "AVX512", "AVX512_BF16"])
def test_bf16_warns_on_a_cpu_without_bf16_kernels(monkeypatch, capability):
    from hptransfer.assemble import SLOW_BF16_CPUS, check_bf16

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        check_bf16(small(**{"train.dtype": "bfloat16"}))
        check_bf16(small())  # float32: never
    slow = capability in SLOW_BF16_CPUS
    assert [str(w.message).split(":")[0] for w in seen] == ["train.dtype = bfloat16"] * slow


def test_fused_kernels_by_default_and_foreach_opts_out():
    p = torch.nn.Parameter(torch.zeros(3))
    for name in ("sgd", "adam", "adamw"):
        assert build_optimizer(name, [{"params": [p], "lr": 0.1}]).defaults["fused"] is True
        opt = build_optimizer(name, [{"params": [p], "lr": 0.1}], foreach=True)
        assert not opt.defaults["fused"] and opt.defaults["foreach"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's compile stack
@pytest.mark.skipif(shutil.which("cc") is None, reason="inductor needs a C compiler")
def test_compiled_run_matches_eager():
    """Inductor compiles forward and backward (with the parameterization's forward hooks
    traced into the graph); 10 steps must give the eager losses to 1e-5."""
    from torch._dynamo.utils import counters

    cfg = small(**{"model.depth": 1, "train.steps": 10, "train.eval_every": 10})
    eager = train(cfg)
    counters.clear()
    compiled = train(cfg.replace(**{"train.compile": True}))
    assert counters["stats"]["unique_graphs"] >= 1  # something was compiled
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=1e-5)
    assert compiled["final_eval_loss"] == pytest.approx(eager["final_eval_loss"], rel=1e-5)
