"""Matplotlib figures for sweeps, scaling fits, coordinate checks and optimizer diagnostics.

Every function draws into the axes it is given (ax= or axes=), creates a figure only when none
is given, and returns what it drew on: an Axes, or a Figure for multi-panel plots. Nothing is
saved or shown here; call fig.savefig yourself. pyplot is imported inside the functions so that
importing this module stays cheap and works with any backend (Agg included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd

from hptransfer.analysis.optimum import DEFAULT_BY, find_optima, lr_curves
from hptransfer.analysis.transfer import setting_label, setting_rows

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_WIDTH_CMAP = "viridis"
_SETTING_CMAP = "tab10"
_DIVERGED_Y = 0.96  # axes-fraction height of the diverged markers
_Setting = TypeVar("_Setting", bound=Mapping[str, Any])


def _width_colors(widths: Sequence[int]) -> dict[int, tuple[float, float, float, float]]:
    """Sequential colours, light to dark in width order (darkest not fully black)."""
    from matplotlib import colormaps

    cmap = colormaps[_WIDTH_CMAP]
    ws = sorted(set(widths))
    pos = np.linspace(0.9, 0.0, len(ws)) if len(ws) > 1 else [0.4]
    return {w: cmap(float(p)) for w, p in zip(ws, pos)}


def _axes_list(axes: Axes | Sequence[Axes] | np.ndarray) -> list[Axes]:
    """A flat list from one Axes, a sequence of them or plt.subplots' array."""
    from matplotlib.axes import Axes

    if isinstance(axes, Axes):
        return [axes]
    return list(np.asarray(axes, dtype=object).ravel())


def plot_lr_sweep(
    df: pd.DataFrame,
    by: Sequence[str] = DEFAULT_BY,
    loss: str = "final_eval_loss",
    axes: Sequence[Axes] | None = None,
    x_label: str = "width",
) -> Figure:
    """Loss against base LR, one panel per setting and one line per width.

    Lines are seed means of usable runs, coloured by width (sequential colormap, darker =
    wider). Diverged LRs are marked with an 'x' near the top of the panel at their LR; the
    interpolated optimum of each width (find_optima) is marked with a star. The x axis is
    log2. The y range is cut at 1.5 x the panel's best loss so that near-divergent losses do
    not flatten the curves, or at 1.1 x the highest of the widths' best losses where that is
    higher, so that every width's curve shows. `axes`, if given, needs one Axes per setting
    (sorted by key).
    x_label names the width column in the legend (e.g. model.depth when it holds depths).
    """
    import matplotlib.pyplot as plt

    by = list(by)
    curves = lr_curves(df, by, loss)
    optima = find_optima(df, by, loss, n_boot=0)
    settings = list(curves.groupby(by, dropna=False, sort=True))
    if axes is None:
        ncols = min(len(settings), 3) or 1
        nrows = max(1, -(-len(settings) // ncols))
        fig, grid = plt.subplots(
            nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False, layout="constrained"
        )
        axes = list(grid.ravel())
        for extra in axes[len(settings) :]:
            extra.set_visible(False)
        created = True
    else:
        axes = _axes_list(axes)
        if len(axes) < len(settings):
            raise ValueError(f"plot_lr_sweep needs {len(settings)} axes (one per setting)")
        fig = axes[0].figure.get_figure(root=True)  # the Figure, also for axes in a SubFigure
        created = False

    colors = _width_colors(curves["width"].unique())
    for ax, (key, g) in zip(axes, settings):
        key = key if isinstance(key, tuple) else (key,)
        for width, c in g.groupby("width", sort=True):
            c = c.sort_values("lr")
            fine = c[~c["diverged"]]
            ax.plot(
                fine["lr"], fine["loss"], "o-", ms=3, lw=1.2, color=colors[width], label=f"{width}"
            )
            bad = c[c["diverged"]]
            if len(bad):
                ax.scatter(
                    bad["lr"],
                    np.full(len(bad), _DIVERGED_Y),
                    marker="x",
                    s=22,
                    color=colors[width],
                    transform=ax.get_xaxis_transform(),
                    label="_diverged",
                    gid="diverged",
                )
        opt = setting_rows(optima, dict(zip(by, key)))
        ax.scatter(
            opt["lr_interp"],
            opt["loss_interp"],
            marker="*",
            s=70,
            zorder=3,
            c=[colors[w] for w in opt["width"]],
            edgecolors="k",
            linewidths=0.5,
            label="_optimum",
            gid="optimum",
        )
        best = np.nanmin(g["loss"].to_numpy(dtype=float)) if g["loss"].notna().any() else np.nan
        if np.isfinite(best) and best > 0:
            # every width's best point shows, with room above it, however far it lies above
            # the panel's best (a narrow width trained for few tokens)
            worst_best = float(g.groupby("width")["loss"].min().max())
            top = min(float(np.nanmax(g["loss"])), max(1.5 * best, 1.1 * worst_best))
            ax.set_ylim(best - 0.05 * (top - best) - 1e-9, top + 0.05 * (top - best) + 1e-9)
        lrs = g["lr"].to_numpy(dtype=float)
        ax.set_xscale("log", base=2)
        ax.set_xlim(lrs.min() / 2**0.25, lrs.max() * 2**0.25)
        ax.set_title(setting_label(key))
        ax.set_xlabel("base learning rate")
        ax.set_ylabel(f"{loss} (nats)")
        ax.grid(True, which="major", alpha=0.3)

    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[w], marker="o", ms=3, label=str(w)) for w in colors]
    handles += [
        Line2D([], [], color="0.3", marker="x", ls="", label="diverged"),
        Line2D([], [], color="0.3", marker="*", ms=9, ls="", label="optimum"),
    ]
    if created:
        fig.legend(handles=handles, title=x_label, loc="outside right upper", fontsize="small")
    else:
        axes[len(settings) - 1].legend(
            handles=handles,
            title=x_label,
            fontsize="small",
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
        )
    return fig


def _new_ax(ax: Axes | None, figsize: tuple[float, float] = (5.0, 3.8)) -> Axes:
    """The given Axes, or a fresh one on a new constrained-layout figure."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def plot_optimal_lr(
    optima: pd.DataFrame,
    fits: pd.DataFrame | None = None,
    ax: Axes | None = None,
    by: Sequence[str] = DEFAULT_BY,
) -> Axes:
    """Optimal base LR eta*(N) against width, log-log, one colour per setting.

    Points are lr_interp with the bootstrap interval as error bars when present; unbracketed
    optima (at_edge) are drawn hollow. With `fits` (from fit_transfer), the law C N^-beta is
    drawn dashed and beta is given in the legend. When the optima span less than a factor 4,
    the y axis spans a factor 4 around them (equal optima would otherwise be drawn as if a span
    of 1e-16 were a factor).
    """
    ax = _new_ax(ax)
    by = list(by)
    from matplotlib import colormaps

    cmap = colormaps[_SETTING_CMAP]
    for i, (key, g) in enumerate(optima.groupby(by, dropna=False, sort=True)):
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values("width")
        color = cmap(i % 10)
        label = setting_label(key)
        if fits is not None:
            row = setting_rows(fits, dict(zip(by, key)))
            if len(row) and np.isfinite(row["beta"].iloc[0]):
                c, beta = float(row["C"].iloc[0]), float(row["beta"].iloc[0])
                n = np.geomspace(g["width"].min(), g["width"].max(), 50)
                ax.plot(n, c * n**-beta, "--", color=color, lw=1)
                label = f"{label} (beta={beta:.2f})"
        lr = g["lr_interp"].to_numpy(dtype=float)
        if {"lr_interp_lo", "lr_interp_hi"} <= set(g.columns) and g["lr_interp_lo"].notna().any():
            err = np.vstack([lr - g["lr_interp_lo"], g["lr_interp_hi"] - lr]).clip(min=0)
            ax.errorbar(g["width"], lr, yerr=err, fmt="none", ecolor=color, lw=1, capsize=2)
        edge = g["at_edge"].to_numpy(dtype=bool) if "at_edge" in g else np.zeros(len(g), bool)
        ax.plot(g["width"], lr, "-", color=color, lw=0.8, alpha=0.5)
        ax.scatter(g["width"][~edge], lr[~edge], color=color, s=25, label=label, zorder=3)
        if edge.any():
            ax.scatter(
                g["width"][edge],
                lr[edge],
                facecolors="none",
                edgecolors=color,
                s=25,
                zorder=3,
                label="_at_edge",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    lrs = optima["lr_interp"].to_numpy(dtype=float)
    if np.isfinite(lrs).any():
        lo, hi = np.nanmin(lrs), np.nanmax(lrs)
        if hi / lo < 4:
            mid = float(np.sqrt(lo * hi))
            ax.set_ylim(mid / 2, mid * 2)
    ax.set_xlabel("width N")
    ax.set_ylabel("optimal base LR eta*")
    ax.set_title("Optimal LR vs width (hollow: not bracketed)")
    ax.legend(fontsize="small", loc="best")
    ax.grid(True, which="major", alpha=0.3)
    return ax


def plot_coord_check(
    coord_df: pd.DataFrame, step: int | None = None, ax: Axes | None = None
) -> Axes:
    """Activation RMS against width, one line per layer, log-log, at one step.

    step=None takes the last step present. Seeds are averaged. The legend gives each layer's
    log-log slope (see analysis.coord_slopes); flat lines (slope ~ 0) mean width-stable
    activations.
    """
    from hptransfer.analysis.coord import coord_slopes

    ax = _new_ax(ax)
    step = int(coord_df["step"].max()) if step is None else step
    at = coord_df[coord_df["step"] == step]
    if at.empty:
        raise ValueError(
            f"no coord-check rows at step {step}; steps: {sorted(coord_df['step'].unique())}"
        )
    slopes = coord_slopes(at).set_index("layer")["slope"]
    mean = at.groupby(["layer", "width"], sort=True)["rms"].mean().reset_index()
    for layer, g in mean.groupby("layer", sort=False):
        ax.plot(
            g["width"], g["rms"], "o-", ms=3, label=f"{layer} ({slopes.get(layer, np.nan):+.2f})"
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width N")
    ax.set_ylabel("activation RMS")
    ax.set_title(f"Coordinate check, step {step}")
    ax.legend(title="layer (slope)", fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.grid(True, which="major", alpha=0.3)
    return ax


def plot_diagnostics(
    metrics: pd.DataFrame,
    key_prefix: str,
    ax: Axes | None = None,
    title: str | None = None,
    legend_cols: int | None = None,
) -> Axes:
    """Per-layer optimizer diagnostics over steps, e.g. key_prefix="underflow/".

    One line per column starting with key_prefix (one per layer); when a width column is
    present, one line per (layer, width), with colour for the layer and line style for width.
    The legend goes to the right of the panel (legend_cols given: that many columns, smaller).
    """
    cols = [c for c in metrics.columns if str(c).startswith(key_prefix)]
    if not cols:
        prefixes = sorted({str(c).split("/")[0] + "/" for c in metrics.columns if "/" in str(c)})
        raise ValueError(f"no metric columns start with {key_prefix!r}; prefixes: {prefixes}")
    ax = _new_ax(ax)
    from matplotlib import colormaps

    cmap = colormaps[_SETTING_CMAP]
    styles = ["-", "--", ":", "-."]
    groups = list(metrics.groupby("width", sort=True)) if "width" in metrics else [(None, metrics)]
    for j, (width, g) in enumerate(groups):
        g = g.sort_values("step")
        for i, col in enumerate(cols):
            name = col[len(key_prefix) :]
            label = name if width is None else f"{name} (N={width})"
            ax.plot(
                g["step"], g[col], styles[j % len(styles)], color=cmap(i % 10), lw=1.2, label=label
            )
    ax.set_xlabel("step")
    ax.set_ylabel(key_prefix.rstrip("/"))
    ax.set_title(title if title is not None else f"{key_prefix.rstrip('/')} per layer")
    ax.legend(
        fontsize="small" if legend_cols is None else "x-small",
        ncols=legend_cols or 1,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
    )
    ax.grid(True, alpha=0.3)
    return ax


_METRIC_TITLES = {
    "E": "E: RMS ln-residual of eta* law (ours)",
    "kappa": "kappa = alpha - 2 beta + gamma",
    "R_inf": "R_inf: L_inf - reference (nats)",
    "beta": "beta: eta* ~ N^-beta",
    "transfer_penalty_pct": "transfer penalty at largest N (%)",
}


def plot_transfer_metrics(
    fits: pd.DataFrame,
    ax: Axes | Sequence[Axes] | None = None,
    by: Sequence[str] = DEFAULT_BY,
    metrics: Sequence[str] = ("E", "kappa", "R_inf"),
) -> Figure:
    """Compare settings on [K]'s metrics: one horizontal-bar panel per metric.

    `ax` may be one Axes per metric (a sequence), a single Axes when one metric is asked for,
    or None for a new figure. E has a shaded band below 0.01, the range [K] marks as good;
    kappa and R_inf have a line at 0. NaN values show as an empty slot labelled "n/a".
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, grid = plt.subplots(
            1,
            len(metrics),
            figsize=(3.6 * len(metrics), 0.9 + 0.35 * max(len(fits), 2)),
            squeeze=False,
            layout="constrained",
        )
        axes = list(grid.ravel())
    else:
        axes = _axes_list(ax)
        if len(axes) != len(metrics):
            raise ValueError(f"plot_transfer_metrics needs {len(metrics)} axes, got {len(axes)}")
        fig = axes[0].figure.get_figure(root=True)  # the Figure, also for axes in a SubFigure
    labels = [setting_label(v) for v in fits[list(by)].itertuples(index=False)]
    pos = np.arange(len(fits))
    for a, metric in zip(axes, metrics):
        vals = fits[metric].to_numpy(dtype=float)
        finite = np.isfinite(vals)
        a.barh(
            pos[finite],
            vals[finite],
            color=[plt.get_cmap(_SETTING_CMAP)(i % 10) for i in pos[finite]],
        )
        for p in pos[~finite]:
            a.text(0, p, " n/a", va="center", fontsize="small", color="0.4")
        if metric == "E":
            a.axvspan(0, 0.01, color="tab:green", alpha=0.15, lw=0)
        a.axvline(0, color="0.3", lw=0.8)
        a.set_yticks(pos, labels)
        a.invert_yaxis()
        a.set_title(_METRIC_TITLES.get(metric, metric), fontsize="medium")
        a.grid(True, axis="x", alpha=0.3)
    for a in axes[1:]:
        a.tick_params(labelleft=False)
    return fig


_OPTIMUM_AXES = {
    "log2_lr_opt": ("log2 optimal base LR", "optimal LR (flat = transfers; ringed: not bracketed)"),
    "loss_opt": ("eval loss at the optimum", "loss at the optimal LR"),
}


def plot_optimum(
    settings: Sequence[_Setting],
    value: str = "log2_lr_opt",
    ax: Axes | None = None,
    x: str = "width",
    style: Callable[[_Setting], dict[str, Any]] | None = None,
) -> Axes:
    """An optimum's quantity against the scaled dimension, one line per setting.

    settings: one mapping per setting with its name ("setting"), the x values (key `x`), the
    values per x (key `value`: "log2_lr_opt" or "loss_opt") and "at_edge" per x (ringed: the
    LR grid did not bracket the optimum). style(setting) gives line keywords (default: cycle).
    """
    ax = _new_ax(ax)
    for i, rec in enumerate(settings):
        kw = style(rec) if style is not None else {"color": f"C{i % 10}", "marker": "o", "ms": 4}
        xs, ys = rec[x], rec[value]
        ax.plot(xs, ys, lw=1.3, label=rec["setting"], **kw)
        edge = [j for j, e in enumerate(rec["at_edge"]) if e]
        ax.scatter([xs[j] for j in edge], [ys[j] for j in edge], s=70, marker="o",
                   facecolors="none", edgecolors="0.3", zorder=3)  # fmt: skip
    ylabel, title = _OPTIMUM_AXES[value]
    ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize="medium")
    return ax


def plot_underflow(settings: Sequence[Mapping[str, Any]], ax: Axes | None = None) -> Axes:
    """Fraction of Adam's second-moment coordinates with sqrt(v_hat) < eps against width.

    settings: mappings with "setting", "width" (list) and "underflow" ({role: fraction per
    width, None where unmeasured}); the hidden (solid) and output (dashed) roles are drawn.
    """
    ax = _new_ax(ax)
    for i, rec in enumerate(settings):
        for role, ls in (("hidden", "-"), ("output", "--")):
            if role in rec["underflow"]:
                ax.plot(rec["width"], rec["underflow"][role], ls, marker="o", ms=4,
                        color=f"C{i}", label=f"{rec['setting']}: {role}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("fraction with sqrt(v_hat) < eps")
    ax.set_title("underflow at the optimal LR, end of training", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    return ax


def plot_alignment(
    runs: Sequence[tuple[int, Mapping[str, Sequence[Mapping[str, float]]]]],
    exponent: str,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """One alignment exponent (alpha, omega or u) over training steps, for several runs.

    runs: (width, {role: [{"step": t, exponent: value}, ...]}) per run; colour = width (darker
    = wider), solid = hidden, dashed = output role. Dotted lines at 1/2 and 1 (no and full
    alignment of alpha).
    """
    ax = _new_ax(ax)
    colors = _width_colors([w for w, _ in runs])
    for width, curves in runs:
        for role, ls in (("hidden", "-"), ("output", "--")):
            points = curves.get(role, [])
            ax.plot([p["step"] for p in points], [p[exponent] for p in points], ls, lw=1.3,
                    color=colors[width], label=f"{role}, width {width}")  # fmt: skip
    for level in (0.5, 1.0):
        ax.axhline(level, color="0.6", lw=0.8, ls=":")
    ax.set(title=title or exponent, xlabel="step", ylabel=f"{exponent} (log_n of the ratio)")
    ax.grid(True, alpha=0.3)
    return ax
