"""benchmarks/run_all.py regenerates RESULTS.md and keeps the sections run by hand."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def run_all(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delitem(sys.modules, "run_all", raising=False)
    import run_all

    monkeypatch.setattr(run_all, "HERE", tmp_path)
    return run_all


def test_write_keeps_the_sections_run_by_hand(run_all, tmp_path):
    hand = (
        "## Held-out validation (bench_heldout.py, run by hand, not by run_all.py)\n\nnumbers\n\n"
        "## MFU (bench_mfu.py, run by hand)\n\nmore numbers\n"
    )
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\n## All results\n\nold\n\n" + hand)
    report = {"date": "now", "quick": False, "machine": {"cpu": "x"}, "results": {},
              "sections": {}}  # fmt: skip
    run_all.write(report)
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.endswith(hand)
    assert "old" not in text
    assert text.count("run by hand") == 2
    run_all.write(report)  # idempotent: written twice, the sections appear once
    assert (tmp_path / "RESULTS.md").read_text() == text
