"""plots: what is drawn, what is returned, and that nothing is written to disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from hptransfer.analysis import find_optima, fit_transfer  # noqa: E402
from hptransfer.plots import (  # noqa: E402
    plot_coord_check,
    plot_diagnostics,
    plot_lr_sweep,
    plot_optimal_lr,
    plot_transfer_metrics,
)

WIDTHS = (64, 128, 256)
SETTINGS = (("mup", "adam", 0.0), ("sp", "adam", 1.0))
N_DIVERGED = 2  # per (setting, width): the two largest LRs


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.fixture
def sweep() -> pd.DataFrame:
    rows = []
    for param, opt, beta in SETTINGS:
        for n in WIDTHS:
            log_opt = np.log(1e-2) - beta * np.log(n / 64)
            for k in range(-8, 6):
                lr = 1e-2 * 2 ** (k / 2)
                for seed in range(2):
                    diverged = k >= 6 - N_DIVERGED
                    loss = 2 + 5 / np.sqrt(n) + 0.1 * (np.log(lr) - log_opt) ** 2 + 0.01 * seed
                    rows.append(
                        {
                            "run_id": f"{param}{n}{k}{seed}",
                            "parameterization": param,
                            "optimizer": opt,
                            "width": n,
                            "lr": lr,
                            "seed": seed,
                            "status": "diverged" if diverged else "ok",
                            "final_eval_loss": np.nan if diverged else loss,
                        }
                    )
    return pd.DataFrame(rows)


def _with_gid(ax: plt.Axes, gid: str) -> list:
    return [c for c in ax.collections if c.get_gid() == gid]


def test_lr_sweep_one_line_per_width_and_diverged_markers(sweep: pd.DataFrame) -> None:
    fig = plot_lr_sweep(sweep)
    assert isinstance(fig, matplotlib.figure.Figure)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(SETTINGS)
    assert [ax.get_title() for ax in panels] == ["mup / adam", "sp / adam"]
    for ax in panels:
        assert len(ax.lines) == len(WIDTHS)
        assert ax.get_xscale() == "log"
        diverged = _with_gid(ax, "diverged")
        assert len(diverged) == len(WIDTHS)
        assert sum(len(c.get_offsets()) for c in diverged) == len(WIDTHS) * N_DIVERGED
        (optimum,) = _with_gid(ax, "optimum")
        assert len(optimum.get_offsets()) == len(WIDTHS)
        # line colours are distinct per width
        assert len({tuple(line.get_color()) for line in ax.lines}) == len(WIDTHS)


def test_lr_sweep_shows_every_widths_curve(sweep: pd.DataFrame) -> None:
    # width 64 trained for few tokens: its whole curve lies above 1.5 x the panel's best loss
    lifted = sweep.assign(final_eval_loss=sweep["final_eval_loss"] + 3.0 * (sweep["width"] == 64))
    ax = plot_lr_sweep(lifted).axes[0]
    low, top = ax.get_ylim()
    assert low < lifted["final_eval_loss"].min() and top > 1.05 * (2 + 5 / 8 + 3.0)
    assert top < lifted["final_eval_loss"].max()  # near-divergent losses are still cut


def test_lr_sweep_draws_into_given_axes(sweep: pd.DataFrame) -> None:
    fig, axes = plt.subplots(1, 2)
    assert plot_lr_sweep(sweep, axes=axes) is fig
    assert all(len(ax.lines) == len(WIDTHS) for ax in axes)
    with pytest.raises(ValueError, match="2 axes"):
        plot_lr_sweep(sweep, axes=axes[:1])


def test_optimal_lr_and_transfer_metrics(sweep: pd.DataFrame) -> None:
    optima = find_optima(sweep, n_boot=20)
    fits = fit_transfer(optima, sweep)
    fig, ax = plt.subplots()
    assert plot_optimal_lr(optima, fits, ax=ax) is ax
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == len(SETTINGS)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert any("beta=1.00" in t.get_text() for t in ax.get_legend().get_texts())

    fig = plot_transfer_metrics(fits)
    assert len(fig.axes) == 3
    assert all(len(a.patches) >= 1 for a in fig.axes)
    fig2, axes = plt.subplots(1, 3)
    assert plot_transfer_metrics(fits, ax=axes) is fig2
    _, single = plt.subplots()
    plot_transfer_metrics(fits, ax=single, metrics=("beta",))
    assert len(single.patches) == len(SETTINGS)


def test_coord_check_and_diagnostics() -> None:
    coord = pd.DataFrame(
        [
            {"layer": layer, "width": n, "step": step, "rms": n ** (s * step)}
            for layer, s in (("embed", 0.0), ("head", 0.5))
            for n in WIDTHS
            for step in (0, 1)
        ]
    )
    fig, ax = plt.subplots()
    assert plot_coord_check(coord, ax=ax) is ax
    assert len(ax.lines) == 2
    assert "step 1" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["embed (+0.00)", "head (+0.50)"]

    steps = np.arange(5)
    metrics = pd.DataFrame(
        {
            "step": np.tile(steps, 2),
            "width": np.repeat([64, 128], 5),
            "underflow/hidden": 0.1,
            "underflow/head": 0.2,
            "trust_ratio/head": 1.0,
        }
    )
    ax = plot_diagnostics(metrics, "underflow/")
    assert len(ax.lines) == 4  # 2 layers x 2 widths
    assert ax.get_ylabel() == "underflow"
    with pytest.raises(ValueError, match="trust_ratio/"):
        plot_diagnostics(metrics, "clip_rate/")


def test_nothing_written_to_disk(
    sweep: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    optima = find_optima(sweep, n_boot=0)
    fits = fit_transfer(optima, sweep)
    plot_lr_sweep(sweep)
    plot_optimal_lr(optima, fits)
    plot_transfer_metrics(fits)
    coord = pd.DataFrame({"layer": "a", "width": list(WIDTHS), "step": 0, "rms": 1.0})
    plot_coord_check(coord)
    plot_diagnostics(pd.DataFrame({"step": [0, 1], "alpha/w": [0.5, 0.6]}), "alpha/")
    plt.gcf().canvas.draw()
    assert list(tmp_path.iterdir()) == []
