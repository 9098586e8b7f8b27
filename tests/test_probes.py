"""Coordinate check: muP keeps every layer's activation size width-free; SP does not."""

import pytest

from hptransfer.analysis.coord import coord_slopes
from hptransfer.config import RunConfig
from hptransfer.probes.coord import coord_check_config

WIDTHS = [64, 128, 256, 512]
BASE = {
    "param.base_width": 64,
    "model.depth": 2,
    "model.head_dim": 32,
    "train.batch_size": 16,
    "train.seq_len": 64,
    "optimizer.name": "adam",
    "optimizer.lr": 1e-2,
}


def slopes_at_step5(**kw):
    cfg = RunConfig().replace(**{**BASE, **kw}).validate()
    s = coord_slopes(coord_check_config(cfg, WIDTHS, steps=6))
    return dict(zip(s[s.step == 5].layer, s[s.step == 5].slope))


@pytest.mark.slow
def test_mup_adam_slopes_are_flat_and_sp_logits_grow():
    # muP as [K] defines it includes the 1/d_head attention scale; SP keeps 1/sqrt(d_head)
    mup = slopes_at_step5(**{"param.name": "mup", "model.attn_scale": "linear"})
    assert len(mup) == 20
    bad = {k: round(v, 3) for k, v in mup.items() if abs(v) > 0.15}
    assert not bad, f"muP layers whose activations scale with width: {bad}"
    sp = slopes_at_step5(**{"param.name": "sp", "param.lr_exponents": "global"})
    assert sp["head"] > 0.3
    assert max(sp.values()) > 1.0  # hidden activations blow up too
