"""Scaling-law fits and transfer metrics on constructed cases with hand-computed answers."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from hptransfer.analysis import find_optima, fit_loss_law, fit_lr_law, fit_transfer

LN2 = np.log(2.0)
WIDTHS = (64, 128, 256, 512, 1024)


def _sweep(
    beta: float,
    widths: tuple[int, ...] = WIDTHS,
    seeds: int = 1,
    noise: float = 0.0,
    curv: float = 0.1,
    l_inf: float = 2.0,
    a: float = 5.0,
    alpha: float = 0.5,
    ks: range = range(-10, 11),
    setting: tuple[str, str] = ("mup", "adam"),
) -> pd.DataFrame:
    """L(N, lr) = L_inf + A N^-alpha + curv (ln lr - ln lr*(N))^2 with lr*(N) = 1e-2 (N/64)^-beta,
    on a grid lr = 1e-2 * 2^(k/2) shared by all widths, plus Gaussian noise per run."""
    rng = np.random.default_rng(0)
    rows = []
    for n in widths:
        log_opt = np.log(1e-2) - beta * np.log(n / 64)
        for k in ks:
            lr = 1e-2 * 2 ** (k / 2)
            for s in range(seeds):
                loss = l_inf + a * n**-alpha + curv * (np.log(lr) - log_opt) ** 2
                rows.append(
                    {
                        "run_id": f"{setting}{n}{k}{s}",
                        "status": "ok",
                        "parameterization": setting[0],
                        "optimizer": setting[1],
                        "width": n,
                        "lr": lr,
                        "seed": s,
                        "final_eval_loss": loss + noise * rng.standard_normal(),
                    }
                )
    return pd.DataFrame(rows)


def test_lr_law_recovers_beta_one_with_noise_and_seeds() -> None:
    df = _sweep(beta=1.0, seeds=3, noise=0.003)
    fits = fit_transfer(find_optima(df), df)
    row = fits.iloc[0]
    assert row["beta"] == pytest.approx(1.0, abs=0.05)
    assert row["drift_per_doubling"] == pytest.approx(-1.0, abs=0.05)
    assert row["C"] * 64 ** -row["beta"] == pytest.approx(1e-2, rel=0.1)


def test_flat_optimum_recovers_beta_zero() -> None:
    df = _sweep(beta=0.0, seeds=3, noise=0.003)
    row = fit_transfer(find_optima(df), df).iloc[0]
    assert row["beta"] == pytest.approx(0.0, abs=0.05)
    # the LR of the smallest width is right at every width: no transfer penalty to speak of
    assert abs(row["transfer_penalty"]) < 0.01


def test_loss_law_recovers_l_inf_and_alpha() -> None:
    n = np.array([64, 128, 256, 512, 1024, 2048], dtype=float)
    l_inf, a, alpha = fit_loss_law(n, 2.5 + 8.0 * n**-0.35)
    assert l_inf == pytest.approx(2.5, rel=0.02)
    assert alpha == pytest.approx(0.35, rel=0.02)
    assert a == pytest.approx(8.0, rel=0.02)
    # through the whole pipeline (interpolated optima of a noiseless sweep)
    row = fit_transfer(find_optima(_sweep(beta=0.5, l_inf=2.0, a=5.0, alpha=0.5))).iloc[0]
    assert row["L_inf"] == pytest.approx(2.0, rel=0.02)
    assert row["alpha"] == pytest.approx(0.5, rel=0.02)


def test_loss_law_with_three_widths_and_too_few() -> None:
    n = np.array([128.0, 512.0, 2048.0])
    l_inf, _, alpha = fit_loss_law(n, 3.0 + 2.0 * n**-0.7)
    assert l_inf == pytest.approx(3.0, rel=0.02)
    assert alpha == pytest.approx(0.7, rel=0.02)
    assert fit_loss_law([64, 128], [3.0, 2.9]) == (None, None, None)
    assert fit_loss_law([64, 128, np.nan], [3.0, 2.9, 2.8]) == (None, None, None)
    assert fit_lr_law([64], [1e-3]) == (None, None, None)


def test_kappa_and_e_on_constructed_optima() -> None:
    # Hand computation. Widths N = 64 * 2^j, j = 0..3, x = ln N equally spaced.
    # ln eta* = ln(1e-2) - 1.0 (x - ln 64) + r_j with residuals r = (+d, -d, -d, +d), d = 0.1:
    # sum r = 0 and sum j r_j = 0 - d - 2d + 3d = 0, so r is orthogonal to [1, x], least squares
    # returns beta = 1 and C = 1e-2 * 64 exactly, and E = RMS(r) = d = 0.1.
    # L*(N) = 2 + 5 N^-0.5 -> alpha = 0.5.
    # a(N) = 0.2 (N / 64)^-0.25 -> gamma_log = -0.25, gamma = gamma_log + 2 beta = 1.75,
    # kappa = alpha - 2 beta + gamma = 0.5 - 2 + 1.75 = 0.25.
    n = 64.0 * 2.0 ** np.arange(4)
    d = 0.1 * np.array([1, -1, -1, 1])
    optima = pd.DataFrame(
        {
            "parameterization": "sp",
            "optimizer": "adam",
            "width": n.astype(int),
            "lr_interp": 1e-2 * (n / 64) ** -1.0 * np.exp(d),
            "loss_interp": 2 + 5 * n**-0.5,
            "loss_grid": 2 + 5 * n**-0.5,
            "curvature": 0.2 * (n / 64) ** -0.25,
            "interp_ok": True,
            "at_edge": False,
            "fit_lr_lo": 1e-6,
            "fit_lr_hi": 1.0,
        }
    )
    row = fit_transfer(optima).iloc[0]
    assert row["E"] == pytest.approx(0.1, rel=1e-9)
    assert row["beta"] == pytest.approx(1.0, rel=1e-9)
    assert row["C"] == pytest.approx(0.64, rel=1e-9)
    assert row["gamma_log"] == pytest.approx(-0.25, rel=1e-9)
    assert row["gamma"] == pytest.approx(1.75, rel=1e-9)
    assert row["alpha"] == pytest.approx(0.5, rel=1e-4)
    assert row["kappa"] == pytest.approx(0.25, abs=1e-4)


def test_loss_law_is_fitted_on_the_raw_grid_minimum_by_default() -> None:
    """[K]'s released code fits L* = L_inf + A N^-alpha to the best measured loss per width;
    the quadratic's vertex (loss_interp) is an option. Here the two follow different laws."""
    n = 64.0 * 2.0 ** np.arange(5)
    optima = pd.DataFrame(
        {
            "parameterization": "sp",
            "optimizer": "adam",
            "width": n.astype(int),
            "lr_interp": 1e-2,
            "loss_interp": 2.0 + 5 * n**-0.5,
            "loss_grid": 2.1 + 3 * n**-0.8,
            "curvature": 0.2,
            "interp_ok": True,
            "at_edge": False,
            "fit_lr_lo": 1e-3,
            "fit_lr_hi": 1e-1,
        }
    )
    ref = optima.assign(parameterization="mup", loss_grid=optima["loss_grid"] - 0.05)
    both = pd.concat([optima, ref], ignore_index=True)
    grid = fit_transfer(both, reference="mup").set_index("parameterization").loc["sp"]
    assert grid["L_inf"] == pytest.approx(2.1, abs=1e-4)
    assert grid["alpha"] == pytest.approx(0.8, abs=1e-4)
    assert grid["R_inf"] == pytest.approx(0.05, abs=1e-4)
    interp = fit_transfer(optima, optimum_loss="interpolated").iloc[0]
    assert interp["L_inf"] == pytest.approx(2.0, abs=1e-4)
    assert interp["alpha"] == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(ValueError, match="optimum_loss='vertex'; choose one of grid"):
        fit_transfer(optima, optimum_loss="vertex")


def test_transfer_and_extrapolation_penalties_match_hand_values() -> None:
    # eta* = 1e-2 (N/64)^-1 for N = 64, 128, 256, then bent at 512 to 2^0.5 x the law.
    # Transfer: use eta*(64) = 1e-2 at N=512 whose eta* is 1e-2 / 8 * 2^0.5, i.e. 2.5 octaves
    # away: penalty = a (2.5 ln 2)^2 = 0.1 * 3.00282 = 0.300282 nats.
    # Extrapolation: the law fitted on 64..256 predicts 1e-2 / 8, 0.5 octave away:
    # penalty = 0.1 (0.5 ln 2)^2 = 0.0120113 nats.
    # Best loss at 512: L* = 2 + 5 / sqrt(512) = 2.220971; percents are 100 x penalty / L*.
    widths = (64, 128, 256)
    df = _sweep(beta=1.0, widths=widths, ks=range(-14, 11))
    big = _sweep(beta=1.0, widths=(512,), ks=range(-14, 11))
    log_opt = np.log(1e-2 / 8 * 2**0.5)
    big["final_eval_loss"] = 2 + 5 / np.sqrt(512) + 0.1 * (np.log(big["lr"]) - log_opt) ** 2
    df = pd.concat([df, big], ignore_index=True)
    row = fit_transfer(find_optima(df), df).iloc[0]
    best = 2 + 5 / np.sqrt(512)
    assert row["transfer_penalty"] == pytest.approx(0.1 * (2.5 * LN2) ** 2, rel=1e-6)
    assert row["transfer_penalty_pct"] == pytest.approx(100 * 0.300282 / best, rel=1e-4)
    assert row["extrap_penalty"] == pytest.approx(0.1 * (0.5 * LN2) ** 2, rel=1e-6)
    assert row["extrap_penalty_pct"] == pytest.approx(100 * 0.0120113 / best, rel=1e-4)


def _two_widths(big_ks: range, diverge_from: int | None = None) -> pd.DataFrame:
    """beta = 1 sweep at N = 64 and 1024 (4 octaves apart); the 1024 grid is cut to big_ks and
    runs at k >= diverge_from diverge."""
    df = pd.concat(
        [_sweep(beta=1.0, widths=(64,)), _sweep(beta=1.0, widths=(1024,), ks=big_ks)],
        ignore_index=True,
    )
    if diverge_from is not None:
        k = np.round(2 * np.log2(df["lr"] / 1e-2)).astype(int)
        bad = (df["width"] == 1024) & (k >= diverge_from)
        df.loc[bad, "status"] = "diverged"
        df.loc[bad, "final_eval_loss"] = np.nan
    return df


def test_transfer_penalty_uses_measured_loss_outside_fitted_range() -> None:
    # At 1024, eta* = 1e-2 / 16 (k = -8). The fit keeps the points within one octave of it
    # (|ln lr - ln eta*| <= ln 2), so the transferred LR (k = 0, 4 octaves away) is outside
    # the fitted range: the penalty is the measured grid loss there minus L*:
    # 0.5 (4 ln 2)^2 = 3.8436 nats.
    df = _two_widths(range(-12, 3))
    df["final_eval_loss"] += (0.5 - 0.1) * (
        np.log(df["lr"]) - (np.log(1e-2) - np.log(df["width"] / 64))
    ) ** 2
    opt = find_optima(df)
    big = opt[opt["width"] == 1024].iloc[0]
    assert big["fit_lr_hi"] < 1e-2
    row = fit_transfer(opt, df).iloc[0]
    assert row["transfer_penalty"] == pytest.approx(0.5 * (4 * LN2) ** 2, rel=1e-6)
    # without the runs there is no measurement to fall back on
    assert np.isnan(fit_transfer(opt).iloc[0]["transfer_penalty"])


def test_transfer_penalty_is_inf_when_transferred_lr_diverges() -> None:
    df = _two_widths(range(-12, 3), diverge_from=-2)
    row = fit_transfer(find_optima(df), df).iloc[0]
    assert row["transfer_penalty"] == np.inf
    assert row["transfer_penalty_pct"] == np.inf
    assert np.isnan(row["extrap_penalty"])  # two widths: nothing to extrapolate from


def test_single_width_gives_nans_not_exceptions() -> None:
    df = _sweep(beta=1.0, widths=(128,))
    row = fit_transfer(find_optima(df), df).iloc[0]
    assert row["n_widths"] == 1
    for col in (
        "C",
        "beta",
        "E",
        "L_inf",
        "alpha",
        "gamma",
        "kappa",
        "transfer_penalty",
        "extrap_penalty",
        "R_inf",
        "drift_per_doubling",
    ):
        assert np.isnan(row[col]), col


def test_r_inf_against_default_and_named_reference() -> None:
    df = pd.concat(
        [
            _sweep(beta=0.0, l_inf=2.0, setting=("mup", "adam")),
            _sweep(beta=1.0, l_inf=2.3, setting=("sp", "adam")),
            _sweep(beta=0.0, l_inf=2.1, setting=("mup", "sgd")),
            _sweep(beta=1.0, l_inf=2.6, setting=("sp", "sgd")),
        ],
        ignore_index=True,
    )
    opt = find_optima(df, n_boot=0)
    fits = fit_transfer(opt).set_index(["parameterization", "optimizer"])
    # default: relative to the lowest L_inf in the study (mup / adam, 2.0)
    assert fits.loc[("sp", "adam"), "R_inf"] == pytest.approx(0.3, abs=0.01)
    assert fits.loc[("sp", "sgd"), "R_inf"] == pytest.approx(0.6, abs=0.01)
    assert fits.loc[("mup", "adam"), "R_inf"] == 0.0
    # a named parameterization: compared under the same optimizer
    by_sp = fit_transfer(opt, reference="sp").set_index(["parameterization", "optimizer"])
    assert by_sp.loc[("mup", "adam"), "R_inf"] == pytest.approx(-0.3, abs=0.01)
    assert by_sp.loc[("mup", "sgd"), "R_inf"] == pytest.approx(-0.5, abs=0.01)
    assert by_sp.loc[("sp", "sgd"), "R_inf"] == 0.0
    with pytest.raises(ValueError, match="ntk"):
        fit_transfer(opt, reference="ntk")


def test_five_thousand_runs_are_fast() -> None:
    # 4 parameterizations x 3 optimizers x 6 widths x 20 LRs x 3 seeds = 4,320 runs
    widths = (64, 128, 256, 512, 1024, 2048)
    df = pd.concat(
        [
            _sweep(beta=b, widths=widths, seeds=3, noise=0.002, ks=range(-10, 10), setting=(p, o))
            for p, b in (("sp", 1.0), ("ntk", 0.5), ("mup", 0.0), ("mfp", 0.2))
            for o in ("adam", "sgd", "lion")
        ],
        ignore_index=True,
    )
    # CPU seconds, not wall time: the same bound whether or not other tests share the core
    start = time.process_time()
    fits = fit_transfer(find_optima(df), df)
    elapsed = time.process_time() - start
    assert len(fits) == 12
    assert elapsed < 5.0
