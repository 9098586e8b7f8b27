"""The three papers' findings reproduced at small scale (``hptransfer repro NAME``).

    reproduction   what a reproduction is (specs, setting columns, label, analysis)
    registry       the reproductions by name
    runner         run a reproduction's specs into one directory (or at smoke size), analyse
    transfer       the analysis shared by the LR-transfer reproductions (analysis.transfer's
                   verdict as records, figures, Markdown)
    e_epsilon, alignment, k_switches   the bespoke analyses
    gradients      the gradient-RMS probe across widths and its fits (e_epsilon)

The full-size numbers, the papers' claims and the commands are in docs/reproductions.md.
"""

from hptransfer.experiments.repro.registry import REPRODUCTIONS, get
from hptransfer.experiments.repro.reproduction import Reproduction
from hptransfer.experiments.repro.runner import (
    RECIPES,
    analyse,
    default_out,
    load_results,
    load_specs,
    markdown,
    run_reproduction,
    smoke_table,
    spec_paths,
)

__all__ = [
    "RECIPES",
    "REPRODUCTIONS",
    "Reproduction",
    "analyse",
    "default_out",
    "get",
    "load_results",
    "load_specs",
    "markdown",
    "run_reproduction",
    "smoke_table",
    "spec_paths",
]
