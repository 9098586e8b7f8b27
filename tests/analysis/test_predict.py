"""predict_lr and recommend on synthetic sweeps with a known optimal-LR law."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hptransfer.analysis.predict import predict_lr, recommend
from hptransfer.config import ConfigError

LR0 = 2.0**-8  # optimum at width 64
GRID = 2.0 ** np.arange(-13.0, -3.0, 0.5)  # half-octave LR grid


def _sweep(
    beta: float = 0.0,
    widths: tuple[int, ...] = (64, 128, 256),
    seeds: int = 2,
    noise: float = 0.005,
    setting: tuple[str, str] = ("mup", "adam"),
    draws: int = 1,
    log_opt: dict[int, float] | None = None,
    rng_seed: int = 0,
) -> pd.DataFrame:
    """L = 3 + 2 N^-1/2 + 0.05 (ln lr - ln lr*(N))^2 + noise, lr*(N) = LR0 (N/64)^-beta (or
    exp(log_opt[N])); runs above 8 lr* diverge. `draws` independent copies, column "draw"."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for d in range(draws):
        for n in widths:
            opt = np.log(LR0) - beta * np.log(n / 64) if log_opt is None else log_opt[n]
            for lr in GRID:
                diverged = np.log(lr) > opt + np.log(8)
                for s in range(seeds):
                    loss = 3 + 2 * n**-0.5 + 0.05 * (np.log(lr) - opt) ** 2
                    rows.append(
                        {
                            "parameterization": setting[0],
                            "optimizer": setting[1],
                            "draw": d,
                            "width": n,
                            "lr": lr,
                            "seed": s,
                            "status": "diverged" if diverged else "ok",
                            "final_eval_loss": np.nan
                            if diverged
                            else loss + noise * rng.standard_normal(),
                        }
                    )
    return pd.DataFrame(rows)


def _one(pred: pd.DataFrame, label: str) -> pd.Series:
    return pred.set_index("label").loc[label]


def test_transfers_keeps_the_measured_optimum() -> None:
    row = predict_lr(_sweep(beta=0.0), 2048, n_boot=50).iloc[0]
    assert row["rule"] == "keep"
    assert row["lr_lo"] <= LR0 <= row["lr_hi"]
    assert row["lr"] == pytest.approx(LR0, rel=0.1)
    assert row["lr"] == row["lr_keep"]
    assert row["beta_lo"] <= 0 <= row["beta_hi"]
    # three widths fit the loss law exactly: 8x beyond them, the optimum losses' noise
    # (find_optima's +-1 octave fit, 0.005 nats per run) moves it by about 0.02
    assert row["loss"] == pytest.approx(3 + 2 * 2048**-0.5, abs=0.03)
    # 2048 = 8 x 256: not yet far; three widths: the loss law is exact, which is said
    assert [w.split(":")[0] for w in row["warnings"]] == ["three widths"]


def test_drift_extrapolates_the_law() -> None:
    truth = LR0 * (4096 / 64) ** -1.0
    row = predict_lr(_sweep(beta=1.0), 4096, n_boot=50).iloc[0]
    assert row["rule"] == "extrapolate"
    assert row["keep_share"] == 0.0
    assert row["lr_lo"] <= truth <= row["lr_hi"]
    assert row["lr"] == pytest.approx(truth, rel=0.15)
    assert row["drift_per_doubling"] == pytest.approx(-1.0, abs=0.05)
    assert any(w.startswith("far extrapolation") for w in row["warnings"])  # 16x


def test_interval_covers_the_truth_at_the_nominal_rate() -> None:
    """600 independent noisy sweeps, 300 whose optimum stays (keep) and 300 where it drifts
    (beta = 1/2, extrapolate), one seed each: the curvature of each width's quadratic is poorly
    known, the case where the plain percentile interval covers 75%. The 80% interval must
    contain the true LR at width 1024 in 80% +- 2.5 binomial sigma (+-0.041) of them."""
    draws, level, covered = 300, 0.8, []
    by = ("parameterization", "optimizer", "draw")
    for beta, rule in ((0.0, "keep"), (0.5, "extrapolate")):
        df = _sweep(beta=beta, seeds=1, noise=0.01, draws=draws, rng_seed=5)
        pred = predict_lr(df, 1024, by, n_boot=40, level=level, expected_loss=False)
        truth = LR0 * (1024 / 64) ** -beta
        covered.append(((pred["lr_lo"] <= truth) & (truth <= pred["lr_hi"])).to_numpy())
        assert (pred["rule"] == rule).mean() > 0.5
        assert pred["loss"].isna().all()
    rate = np.concatenate(covered).mean()
    assert abs(rate - level) <= 2.5 * np.sqrt(level * (1 - level) / (2 * draws)), rate


def test_poor_fit_is_flagged() -> None:
    zigzag = {64: np.log(LR0), 128: np.log(LR0) + 1.5, 256: np.log(LR0) - 1.0}
    row = predict_lr(_sweep(log_opt=zigzag, noise=0.001), 512, n_boot=20).iloc[0]
    assert row["E"] > 0.1
    assert any(w.startswith("poor fit") for w in row["warnings"])
    clean = predict_lr(_sweep(beta=0.5, noise=0.001), 512, n_boot=20).iloc[0]
    assert not any(w.startswith("poor fit") for w in clean["warnings"])


def test_two_widths_predict_without_loss_law() -> None:
    row = predict_lr(_sweep(beta=1.0, widths=(64, 128)), 512, n_boot=20).iloc[0]
    assert row["rule"] == "extrapolate"
    # two widths, extrapolated 4x: each width's optimum is uncertain by ~0.15 octave, so the
    # law's is by ~0.4 octave at the target
    assert abs(np.log2(row["lr"] / (LR0 / 8))) < 0.5
    assert np.isnan(row["loss"])
    assert any("two widths only" in w for w in row["warnings"])


def test_noiseless_fit_has_no_residuals_to_resample() -> None:
    row = predict_lr(_sweep(beta=1.0, noise=0.0, seeds=1), 512, n_boot=20).iloc[0]
    assert row["lr"] == pytest.approx(LR0 / 8, rel=1e-6)


@pytest.mark.parametrize(
    ("df", "width", "message"),
    [
        (_sweep(widths=(64,)), 512, "one width only"),
        (_sweep(), 32, "below the swept range"),
        (_sweep().assign(status="failed"), 512, "no converged run"),
    ],
)
def test_bad_input_raises_config_error(df: pd.DataFrame, width: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        predict_lr(df, width, n_boot=20)


def test_recommend_lowest_loss_then_better_transfer() -> None:
    mup = _sweep(beta=0.0)
    sp = _sweep(beta=1.0, setting=("sp", "adam"))
    worse = sp.assign(final_eval_loss=sp["final_eval_loss"] + 0.1)
    pred = predict_lr(pd.concat([mup, worse]), 1024, n_boot=20)
    best, why = recommend(pred)
    assert pred.loc[best, "label"] == "mup / adam"
    assert why.startswith("lowest expected loss")
    # equal losses: a tie, which goes to the setting that keeps its optimum
    sp_tied = _sweep(beta=1.0, setting=("sp", "adam"))
    pred = predict_lr(pd.concat([sp_tied, mup]), 1024, n_boot=20)
    best, why = recommend(pred)
    assert pred.loc[best, "label"] == "mup / adam"
    assert "better transfer" in why
    # a clearly lower loss beats the better transfer
    better = sp_tied.assign(final_eval_loss=sp_tied["final_eval_loss"] - 0.1)
    pred = predict_lr(pd.concat([mup, better]), 1024, n_boot=20)
    assert _one(pred, "sp / adam")["loss"] < _one(pred, "mup / adam")["loss"]
    assert pred.loc[recommend(pred)[0], "label"] == "sp / adam"
