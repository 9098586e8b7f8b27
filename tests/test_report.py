"""report: a real tiny sweep, a synthetic sweep with a known drift, and bad input."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hptransfer.cli import main
from hptransfer.cli.report import add_parser, run
from hptransfer.config import ConfigError
from hptransfer.report import ReportWarning, build_report, setting_columns

SUMMARY_KEYS = {"optima", "fits", "headline", "answer", "counts", "provenance"}
OPTIMA_KEYS = {"parameterization", "optimizer", "width", "lr_grid", "lr_interp", "loss"}
FIT_KEYS = {
    "parameterization",
    "optimizer",
    "beta",
    "alpha",
    "L_inf",
    "E",
    "kappa",
    "R_inf",
    "transfer_penalty",
}
PROVENANCE_KEYS = {"package_version", "created", "sweep_spec", "corpus_sha256", "torch_versions"}

# synthetic sweep: L = 3 + 2 N^-0.5 + CURVATURE (ln lr - ln lr*(N))^2, lr*(N) = LR0 (N/64)^-beta
WIDTHS = (64, 128, 256, 512)
LRS = tuple(2.0**k for k in range(-12, -4))
BETAS = {"mup": 0.0, "sp": 1.0}
LR0 = {"mup": 2.0**-8, "sp": 2.0**-6}
CURVATURE = 0.04
DIVERGE_RATIO = 4.0  # runs with lr > DIVERGE_RATIO * lr* diverge


def write_run(
    root: Path, run_id: str, config: dict, summary: dict | None, metrics: list[dict] | None = None
) -> Path:
    """One run directory in the store's layout (config.json, summary.json, metrics.jsonl)."""
    run = root / "runs" / run_id
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps({"run_id": run_id, **summary}))
    if metrics is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


def synthetic_config(param: str, width: int, lr: float, seed: int = 0) -> dict:
    return {
        "model": {"width": width},
        "param": {"name": param},
        "optimizer": {"name": "adam", "lr": lr},
        "seed": seed,
    }


def write_synthetic_sweep(root: Path) -> Path:
    """2 parameterizations x 4 widths x 8 LRs with a known optimum drift (mup flat, sp N^-1)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.toml").write_text('[grid]\nparam.name = ["mup", "sp"]\n')
    for param, beta in BETAS.items():
        for width in WIDTHS:
            best = LR0[param] * (width / 64) ** -beta
            for lr in LRS:
                loss = 3.0 + 2.0 * width**-0.5 + CURVATURE * math.log(lr / best) ** 2
                diverged = lr > DIVERGE_RATIO * best
                metrics = [
                    {
                        "step": s,
                        "loss": loss + 1 / (s + 1),
                        "underflow/h0": 0.01 * s,
                        "underflow/out": 0.02 * s,
                    }
                    for s in range(10)
                ]
                write_run(
                    root,
                    f"{param}-{width}-{lr:.6g}",
                    synthetic_config(param, width, lr),
                    {
                        "status": "diverged" if diverged else "ok",
                        "final_eval_loss": None if diverged else loss,
                        "best_eval_loss": None if diverged else loss,
                        "steps": 10,
                        "corpus_sha256": "abc123",
                        "wall_time_s": 1.0,
                    },
                    metrics,
                )
    return root


def _args(directory: Path, **kw: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    extra = [f"--{k}" if v is None else f"--{k}={v}" for k, v in kw.items()]
    return parser.parse_args(["report", str(directory), *extra])


# ---------------------------------------------------------------------------------------------
# (a) a real tiny sweep


REAL_LRS = (1e-3, 3e-3, 1e-2)
TINY = {
    "model.depth": 1,
    "model.head_dim": 16,
    "train.steps": 20,
    "train.batch_size": 4,
    "train.seq_len": 32,
    "train.eval_every": 10,
    "train.eval_batches": 2,
}


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 parameterizations x 2 widths x 3 LRs of adam, trained for real (~6 s), plus one
    synthetic diverged run."""
    from hptransfer.config import RunConfig
    from hptransfer.train import train

    root = tmp_path_factory.mktemp("real_sweep")
    (root / "sweep.toml").write_text(
        "[grid]\nparam.name = ['mup', 'sp']\nmodel.width = [32, 64]\n"
        f"optimizer.lr = {list(REAL_LRS)}\n"
    )
    base = RunConfig().replace(**TINY)
    for param in ("mup", "sp"):
        for width in (32, 64):
            for lr in REAL_LRS:
                cfg = base.replace(
                    **{"param.name": param, "model.width": width, "optimizer.lr": lr}
                )
                train(cfg, root / "runs" / cfg.run_id())
    write_run(
        root,
        "diverged0",
        synthetic_config("sp", 64, 1.0),
        {"status": "diverged", "final_eval_loss": None, "best_eval_loss": None, "steps": 3},
    )
    return root


def test_report_of_a_real_sweep(real_sweep: Path, tmp_path: Path) -> None:
    html_path, summary_path = build_report(real_sweep, tmp_path)
    assert html_path == tmp_path / "report.html" and summary_path == tmp_path / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["counts"]["ok"] == 12 and summary["counts"]["diverged"] == 1
    assert summary["counts"]["total"] == 13
    assert len(summary["optima"]) == 4
    for row in summary["optima"]:
        assert OPTIMA_KEYS <= set(row)
        assert isinstance(row["width"], int) and isinstance(row["lr_interp"], float)
    assert {f["parameterization"] for f in summary["fits"]} == {"mup", "sp"}
    for fit in summary["fits"]:
        assert FIT_KEYS <= set(fit)
        assert all(
            fit[k] is None or isinstance(fit[k], float)
            for k in FIT_KEYS - {"parameterization", "optimizer"}
        )
        assert isinstance(fit["beta"], float)  # two widths: the LR law is defined
        assert fit["alpha"] is None  # the loss law needs three widths
    prov = summary["provenance"]
    assert PROVENANCE_KEYS <= set(prov)
    assert "param.name" in prov["sweep_spec"] and len(prov["corpus_sha256"]) == 1
    assert isinstance(prov["torch_versions"], list)
    page = html_path.read_text()
    assert page.index('id="headline-table"') < page.index("<img")
    assert "http://" not in page and "https://" not in page and "<script" not in page


# ---------------------------------------------------------------------------------------------
# (b) a synthetic sweep with a known drift


def test_headline_verdicts_on_a_known_drift(tmp_path: Path) -> None:
    root = write_synthetic_sweep(tmp_path / "sweep")
    html_path, summary_path = build_report(root, reference="sp")
    summary = json.loads(summary_path.read_text())
    head = {h["parameterization"]: h for h in summary["headline"]}
    assert head["mup"]["verdict"] == "transfers" and head["sp"]["verdict"] == "drifts"
    assert head["mup"]["drift_factor_per_doubling"] == pytest.approx(1.0, abs=0.02)
    assert head["sp"]["drift_factor_per_doubling"] == pytest.approx(0.5, rel=0.05)
    assert head["sp"]["lr_at_width_min"] == pytest.approx(2.0**-6, rel=0.05)
    assert head["sp"]["lr_at_width_max"] == pytest.approx(2.0**-9, rel=0.05)
    # sp at N=512 with the LR of N=64 (8x too large) diverged on the grid
    assert summary["fits"][1]["transfer_penalty"] is None  # inf is written as null
    assert head["mup"]["transfer_penalty_pct"] == pytest.approx(0.0, abs=0.01)
    fits = {f["parameterization"]: f for f in summary["fits"]}
    assert fits["sp"]["R_inf"] == pytest.approx(0.0, abs=1e-6)
    assert fits["mup"]["beta"] == pytest.approx(0.0, abs=0.02)
    assert fits["mup"]["alpha"] == pytest.approx(0.5, abs=0.05)
    assert summary["counts"]["diverged"] > 0
    page = html_path.read_text()
    assert "&times;0.50 per doubling" in page and "&times;1.00 per doubling" in page
    assert page.count("<img") == 4  # LR sweep, optimal LR, metrics, underflow diagnostics


def test_what_to_use_at_a_larger_width(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The answer section: predict_lr + recommend at 8x the largest width, or --target-width."""
    root = write_synthetic_sweep(tmp_path / "sweep")
    html_path, summary_path = build_report(root, tmp_path / "default")
    answer = json.loads(summary_path.read_text())["answer"]
    assert answer["width"] == 8 * max(WIDTHS) and answer["level"] == 0.9
    rows = {r["parameterization"]: r for r in answer["settings"]}
    # muP's optimum stays put: keep it; SP's moves as N^-1: extrapolate it to 4096
    assert rows["mup"]["rule"] == "keep" and rows["mup"]["lr"] == pytest.approx(LR0["mup"])
    assert rows["sp"]["rule"] == "extrapolate"
    assert rows["sp"]["lr"] == pytest.approx(LR0["sp"] * 64 / 4096, rel=1e-6)
    assert rows["sp"]["lr_lo"] <= rows["sp"]["lr"] <= rows["sp"]["lr_hi"]
    assert isinstance(rows["sp"]["warnings"], list)
    # equal expected losses (the loss law does not depend on the parameterization): the tie
    # goes to the better transfer
    assert answer["recommended"]["setting"] == "mup / adam"
    assert "better transfer" in answer["recommended"]["reason"]
    page = html_path.read_text()
    assert page.index('id="headline-table"') < page.index("What to use at width 4096")
    section = page[page.index('id="answer-table"') : page.index("<h2>Details</h2>")]
    assert '<td>sp / adam</td><td>extrapolate</td><td class="num">2.44e-4</td>' in section
    assert "Recommended: mup / adam" in section

    assert run(_args(root, out=tmp_path / "at1024", **{"target-width": 1024})) == 0
    answer = json.loads((tmp_path / "at1024" / "summary.json").read_text())["answer"]
    sp = next(r for r in answer["settings"] if r["parameterization"] == "sp")
    assert answer["width"] == 1024 and sp["lr"] == pytest.approx(LR0["sp"] / 16, rel=1e-6)

    # below the swept widths: one line, exit 2, nothing written
    assert main(["report", str(root), "--out", str(tmp_path / "low"), "--target-width", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--target-width 32" in err[0]
    assert not (tmp_path / "low").exists()


def test_one_width_reports_why_there_is_no_answer(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for lr in LRS:
        loss = 3.0 + CURVATURE * math.log(lr / 2.0**-8) ** 2
        write_run(root, f"r{lr}", synthetic_config("mup", 64, lr),
                  {"status": "ok", "final_eval_loss": loss, "best_eval_loss": loss})  # fmt: skip
    html_path, summary_path = build_report(root)
    answer = json.loads(summary_path.read_text())["answer"]
    assert answer["width"] == 512 and "one width" in answer["unavailable"]
    assert "No prediction: optima at one width only" in html_path.read_text()


def test_partial_sweep_is_reported_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_synthetic_sweep(tmp_path / "sweep")
    write_run(root, "pending0", synthetic_config("mup", 64, 0.01), None)
    (root / "runs" / "corrupt0").mkdir()
    (root / "runs" / "corrupt0" / "config.json").write_text("{not json")
    with pytest.warns(ReportWarning, match="1 of 66 runs unfinished"):
        build_report(root)
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or False)
    assert run(_args(root, open=None)) == 0
    assert opened == [(root / "report.html").resolve().as_uri()]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hptransfer report: warning: incomplete sweep")
    summary = json.loads((root / "summary.json").read_text())
    assert summary["counts"]["pending"] == 1 and summary["counts"]["unreadable"] == 1
    assert "incomplete sweep" in (root / "report.html").read_text()


def test_setting_columns_keep_swept_keys_that_are_not_a_function_of_width() -> None:
    import pandas as pd

    rows = [
        {
            "parameterization": "mup",
            "optimizer": "adam",
            "width": w,
            "lr": lr,
            "param.alignment": align,
            "train.steps": 10 * w,
        }
        for w in (64, 128)
        for lr in (0.1, 0.2)
        for align in ("full", "none")
    ]
    assert setting_columns(pd.DataFrame(rows)) == [
        "parameterization",
        "optimizer",
        "param.alignment",
    ]


# ---------------------------------------------------------------------------------------------
# (c) bad input


def _corrupt_only(root: Path) -> Path:
    for i in range(2):
        (root / "runs" / f"r{i}").mkdir(parents=True)
        (root / "runs" / f"r{i}" / "config.json").write_text("[truncated")
    return root


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such sweep directory"),
        (lambda p: p, "no runs in"),
        (_corrupt_only, "no readable runs"),
    ],
    ids=["missing", "empty", "corrupt"],
)
def test_bad_directories_exit_2_with_one_line(
    make, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    directory = make(tmp_path)
    with pytest.raises(ConfigError, match=message):
        build_report(directory)
    assert main(["report", str(directory)]) == 2  # through the CLI's one boundary
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in captured.err
    assert not (tmp_path / "report.html").exists()


def test_unknown_reference_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_synthetic_sweep(tmp_path / "sweep")
    assert main(["report", str(root), "--reference", "ntk"]) == 2
    assert "ntk" in capsys.readouterr().err


def test_cli_subprocess_exit_code(tmp_path: Path) -> None:
    """Through `python -m hptransfer report` once the CLI has wired the subcommand."""
    cli = pytest.importorskip("hptransfer.cli")
    wired = [a for a in cli.build_parser()._subparsers._group_actions if "report" in a.choices]
    if not wired:
        pytest.skip("the report subcommand is not wired into hptransfer.cli yet")
    proc = subprocess.run(
        [sys.executable, "-m", "hptransfer", "report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_parser_construction_imports_nothing_heavy() -> None:
    code = (
        "import argparse, sys; from hptransfer.cli.report import add_parser; "
        "add_parser(argparse.ArgumentParser().add_subparsers()); "
        "print(sorted(m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
