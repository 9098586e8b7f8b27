"""run_id: a stable hash of the config's non-default values (resumable stores rely on it)."""

from __future__ import annotations

import dataclasses

from hptransfer import config
from hptransfer.config import RunConfig


def test_run_id_is_pinned_and_depends_only_on_non_default_values() -> None:
    cfg = RunConfig().replace(**{"model.width": 256, "optimizer.lr": 0.00390625})
    assert cfg.run_id() == "b8906602fbfb"  # pinned: a change here invalidates every store
    default_width = RunConfig().model.width
    assert RunConfig().replace(**{"model.width": default_width}).run_id() == RunConfig().run_id()
    assert cfg.replace(**{"seed": 1}).run_id() != cfg.run_id()
    assert cfg.replace(**{"optimizer.options": {"nesterov": True}}).run_id() != cfg.run_id()


def test_a_new_field_with_a_default_keeps_old_run_ids(monkeypatch) -> None:
    cfg = RunConfig().replace(**{"model.width": 256})
    before = cfg.run_id()

    @dataclasses.dataclass(frozen=True)
    class Extended(RunConfig):
        future: int = 7

    monkeypatch.setattr(config, "RunConfig", Extended)
    config._defaults.cache_clear()
    try:
        extended = Extended(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
        assert extended.run_id() == before
        assert dataclasses.replace(extended, future=8).run_id() != before
    finally:
        config._defaults.cache_clear()


def test_trackers_do_not_change_the_run_id() -> None:
    cfg = RunConfig()
    assert cfg.replace(**{"track.tensorboard": True}).run_id() == cfg.run_id()
