"""The wheel works outside the source tree.

It is built from a copy of the checkout, installed without dependencies into a fresh virtual
environment that sees this environment's packages through a ``.pth`` file (so torch is not
installed twice), and its console script runs from a directory with no checkout above it:
recipes and specs must come from the installed package, not from ``recipes/`` next to ``src/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent  # holds test_sweep_fakes, and no package
ROOT = TESTS.parent
NOT_BUILT_FROM = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "hpt-results")


def _env() -> dict[str, str]:
    """This environment without PYTHONPATH, which would put a checkout's sources first."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def check(*cmd: str | Path) -> str:
    """Run ``cmd``; its stdout, or a failed assertion showing its output."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=_env())
    assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
    return done.stdout


class Installed:
    """The wheel installed in a fresh virtual environment; `run` calls its `hptransfer`."""

    def __init__(self, tmp: Path) -> None:
        source, dist, self.venv, self.cwd = tmp / "source", tmp / "dist", tmp / "venv", tmp / "cwd"
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_BUILT_FROM))
        offline = ("--no-deps", "--no-index")  # the wheel alone; torch & co. come from here
        pip = (sys.executable, "-m", "pip")
        check(*pip, "wheel", *offline, "--no-build-isolation", "-w", dist, source)
        (wheel,) = dist.glob("hptransfer-*.whl")
        check(sys.executable, "-m", "venv", "--without-pip", self.venv)
        self.python = self.venv / "bin" / "python"
        site = check(self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        shared = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
        (Path(site.strip()) / "shared-deps.pth").write_text("".join(f"{p}\n" for p in shared))
        check(self.python, "-m", "pip", "install", *offline, "--ignore-installed", wheel)
        self.cwd.mkdir()

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``hptransfer ARGS`` from a directory outside the checkout, ``env`` added."""
        return subprocess.run(
            [str(self.venv / "bin" / "hptransfer"), *args],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            env={**_env(), **env},
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return Installed(tmp_path_factory.mktemp("wheel"))


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    where = check(installed.python, "-c", "import hptransfer; print(hptransfer.__file__)")
    assert Path(where.strip()).is_relative_to(installed.venv)


def test_help_lists_the_commands(installed: Installed) -> None:
    done = installed.run("--help")
    assert done.returncode == 0, done.stderr
    for command in ("train", "rules", "sweep", "report", "repro", "demo"):
        assert command in done.stdout


def test_repro_lists_and_runs_a_reproduction_from_package_data(installed: Installed) -> None:
    listed = installed.run("repro", "--list")
    assert listed.returncode == 0, listed.stderr
    assert "e_alignment" in listed.stdout
    out = installed.cwd / "repro"
    done = installed.run("repro", "e_alignment", "--smoke", "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "e_alignment.json").is_file()


def test_demo_runs_from_package_data(installed: Installed) -> None:
    """The demo's sweep, report and printout, with the sweep tests' stand-in for train (the
    real one takes minutes here; the repro smoke run above trains for real from the wheel)."""
    out = installed.cwd / "demo"
    fake = {"HPTRANSFER_TRAIN_FN": "test_sweep_fakes:fake_train", "FAKE_TRAIN_S": "0"}
    done = installed.run("demo", "--out", str(out), "--quiet", PYTHONPATH=str(TESTS), **fake)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mup: optimal LR per width" in done.stdout
    assert (out / "report.html").is_file()
