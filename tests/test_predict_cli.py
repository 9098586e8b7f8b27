"""hptransfer predict: the table, the JSON, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_plan import write_sweep
from test_report import write_run

from hptransfer.cli import main
from hptransfer.config import RunConfig


def _sp_runs(root: Path) -> None:
    """An SP setting whose optimum halves per doubling of width (one seed, no noise)."""
    base = RunConfig().replace(**{"model.head_dim": 16, "param.name": "sp"})
    for width in (32, 64, 128):
        for k in range(-14, -2):
            lr = 2.0**k
            cfg = base.replace(**{"model.width": width, "optimizer.lr": lr})
            loss = 3.1 + 0.05 * math.log(lr * width / 2.0**-2) ** 2 + 0.001 * math.cos(k * width)
            write_run(root, cfg.run_id(), cfg.to_dict(), {"status": "ok", "final_eval_loss": loss})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_sweep(tmp_path_factory.mktemp("sweep"))
    _sp_runs(root)
    return root


def test_table_names_rule_interval_and_recommendation(
    sweep: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["predict", str(sweep), "--width", "2048", "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    assert "mup / adam  keep" in out
    assert "sp / adam   extrapolate" in out
    assert "90% interval" in out
    assert "recommended: mup / adam: lowest expected loss" in out
    assert "output 0.5" in out  # the tuned per-role constant of the mup runs
    assert "warning: mup / adam: far extrapolation" in out  # 2048 = 16 x 128


def test_json_and_setting_filter(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["predict", str(sweep), "--width", "512", "--n-boot", "20", "--format", "json"]
    assert main([*argv, "--setting", "sp"]) == 0
    result = json.loads(capsys.readouterr().out)
    (sp,) = result["settings"]
    assert sp["label"] == "sp / adam" and sp["rule"] == "extrapolate"
    assert sp["lr"] == pytest.approx(2.0**-2 / 512, rel=0.05)
    assert result["recommended"]["setting"] == "sp / adam"


def _check_refused(argv: list[str], out: Path, message: str, capsys) -> None:
    assert main([*argv, "--export", str(out / "plan.json"), "--export", str(out / "r.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--setting", "ntk"], "no such setting"),
        (["--width", "16"], "below the swept range"),
        (["--width", "100"], "not divisible"),  # model.head_dim = 16
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(
    sweep: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    argv = ["predict", str(sweep), "--width", "512", "--n-boot", "20", *extra]
    _check_refused(argv, tmp_path / "out", message, capsys)


@pytest.mark.parametrize(
    ("widths", "status", "message"),
    [((64,), "ok", "one width only"), ((32, 64), "failed", "no converged run")],
)
def test_bad_directories_exit_2_and_write_nothing(
    tmp_path: Path, capsys, widths: tuple[int, ...], status: str, message: str
) -> None:
    root = write_sweep(tmp_path / "sweep", widths, status)
    _check_refused(["predict", str(root), "--width", "512"], tmp_path / "out", message, capsys)


def test_missing_directory_and_bad_export_name(tmp_path: Path, capsys) -> None:
    _check_refused(
        ["predict", str(tmp_path / "nope"), "--width", "512"], tmp_path / "o", "no such", capsys
    )
    root = write_sweep(tmp_path / "sweep")
    assert main(["predict", str(root), "--width", "512", "--export", str(tmp_path / "p.yaml")]) == 2
    assert "--export" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()
