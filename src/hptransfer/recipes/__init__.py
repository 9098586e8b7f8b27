"""Named experiments as TOML, shipped with the package (package data).

    tiny.toml            a small run for `hptransfer train` (the README's quickstart)
    demo.toml            the sweep of `hptransfer demo`
    sweep_example.toml   a sweep spec showing every section (docs/sweeps.md)
    repro/*.toml         the reproductions' sweep specs (`hptransfer repro`, docs/reproductions.md)

In a source checkout they live in src/hptransfer/recipes/; from an installed package they are
read through importlib.resources, so `hptransfer demo` and `hptransfer repro` work from a wheel.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

RECIPES = Path(str(files(__name__)))
"""The directory holding the packaged recipes."""


def recipe_path(name: str) -> Path:
    """The path of a packaged recipe, e.g. ``"demo.toml"`` or ``"repro/e_epsilon.toml"``."""
    return RECIPES / name
