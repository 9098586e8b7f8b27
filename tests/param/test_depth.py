"""Residual-branch depth multipliers (L0 / L)^p (parameterizations.md §6) and their LR rule."""

import pytest
import torch
import torch.nn.functional as F

from hptransfer.assemble import build
from hptransfer.config import ConfigError, RunConfig
from hptransfer.models import build_model
from hptransfer.param.apply import scale_branches
from hptransfer.param.rules import depth_lr_factor, depth_multiplier


def test_multiplier_and_lr_factor_values():
    assert depth_multiplier(8, 2, 0.5) == pytest.approx(0.5)
    assert depth_multiplier(8, 2, 1.0) == pytest.approx(0.25)
    assert depth_multiplier(4, 4, 0.5) == 1.0
    assert depth_lr_factor("adam", 8, 2, 0.5) == pytest.approx(0.5)  # depth-muP + Adam: 1/sqrt
    assert depth_lr_factor("adam", 8, 2, 1.0) == 1.0  # CompleteP: none
    assert depth_lr_factor("spectral:muon", 8, 2, 1.0) == 1.0
    assert depth_lr_factor("sgd", 8, 2, 0.5) == 1.0  # depth-muP + SGD: none
    assert depth_lr_factor("sgd", 8, 2, 1.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match=">= 1"):
        depth_multiplier(0, 2, 0.5)


def test_hooks_scale_the_branch_outputs_like_the_models_own_multiplier():
    kw = {"width": 32, "depth": 3, "seq_len": 16, "head_dim": 16}
    torch.manual_seed(0)
    hooked = build_model("nanodo", **kw)
    builtin = build_model("nanodo", **kw, residual_multiplier=0.3)
    builtin.load_state_dict(hooked.state_dict())
    plain = hooked(torch.arange(16)[None]).detach()
    handles = scale_branches(hooked, ["*blocks.*.attn", "*blocks.*.mlp"], 0.3)
    x = torch.arange(16)[None]
    torch.testing.assert_close(hooked(x), builtin(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(hooked(x), plain)
    assert len(handles) == 6
    for h in handles:
        h.remove()
    torch.testing.assert_close(hooked(x), plain)


def test_nested_matches_are_scaled_once_and_no_match_is_an_error():
    model = build_model("nanodo", width=32, depth=2, seq_len=16, head_dim=16)
    handles = scale_branches(model, ["blocks.*.attn", "blocks.*.attn.*"], 0.5)
    assert len(handles) == 2  # q, k, v, o inside attn are not scaled again
    mlp = build_model("mlp", width=32, depth=2, seq_len=16, head_dim=16)
    with pytest.raises(ValueError, match="depth_branches"):
        scale_branches(mlp, ["*blocks.*.attn"], 0.5)


def _residual_rms(depth: int, exponent: float, steps: int) -> float:
    """RMS of the residual stream entering the final norm, after ``steps`` Adam steps."""
    cfg = RunConfig().replace(
        **{
            "model.width": 64,
            "model.depth": depth,
            "model.head_dim": 16,
            "param.name": "mup",
            "param.base_width": 64,
            "train.seq_len": 32,
            "param.depth_exponent": exponent,
            "param.depth_base": 2,
            "optimizer.lr": 1e-2,
        }
    )
    s = build(cfg.validate())
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        loss = F.cross_entropy(s.model(x).flatten(0, 1), x.flatten())
        s.optimizer.zero_grad()
        loss.backward()
        s.optimizer.step()
    seen = []
    s.model.ln_f.register_forward_pre_hook(lambda m, a: seen.append(a[0].pow(2).mean().sqrt()))
    with torch.no_grad():
        s.model(x)
    return seen[0].item()


@pytest.mark.parametrize("steps", [0, 5])
def test_residual_stream_size_is_depth_stable(steps):
    """2 -> 16 blocks: without multipliers the stream grows (x2 at init, x10 after 5 steps);
    with (L0/L)^p and the hidden-LR rule it stays within 15% for p = 1/2 and shrinks at most
    25% for p = 1."""
    plain = _residual_rms(16, 0.0, steps) / _residual_rms(2, 0.0, steps)
    half = _residual_rms(16, 0.5, steps) / _residual_rms(2, 0.5, steps)
    one = _residual_rms(16, 1.0, steps) / _residual_rms(2, 1.0, steps)
    assert plain > 1.8
    assert half == pytest.approx(1.0, abs=0.15)
    assert 0.75 < one < 1.05


def test_build_installs_and_removes_the_multipliers_and_scales_hidden_lrs():
    cfg = RunConfig().replace(
        **{"model.width": 64, "model.depth": 8, "model.head_dim": 16, "param.base_width": 64}
    )
    plain = build(cfg)
    deep = build(cfg.replace(**{"param.depth_exponent": 0.5, "param.depth_base": 2}))
    fixed_lr = build(
        cfg.replace(**{"param.depth_exponent": 0.5, "param.depth_base": 2, "param.depth_lr": False})
    )
    lr = [{g["role"]: g["lr"] for g in s.optimizer.param_groups} for s in (plain, deep, fixed_lr)]
    assert lr[1]["hidden"] == pytest.approx(0.5 * lr[0]["hidden"])  # (2/8)^(1 - 1/2)
    assert lr[1]["input"] == lr[0]["input"] and lr[2] == lr[0]
    assert all(b.attn._forward_hooks and b.mlp._forward_hooks for b in deep.model.blocks)
    assert not any(b.attn._forward_hooks for b in plain.model.blocks)
    deep.parameterization.remove()
    assert not any(b.attn._forward_hooks or b.mlp._forward_hooks for b in deep.model.blocks)


def test_config_errors():
    with pytest.raises(ConfigError, match="depth_base"):
        RunConfig().replace(**{"param.depth_exponent": 0.5}).validate()
    with pytest.raises(ConfigError, match="depth_exponent must be >= 0"):
        RunConfig().replace(**{"param.depth_exponent": -1.0}).validate()
