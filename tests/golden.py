"""Golden losses: a tiny nanodo run whose per-step losses are checked in.

A change that is not about numerics must not change them. After a change that is MEANT to,
regenerate with `make golden` (python tests/golden.py --write) and say why in the commit.
The corpus is tests/data/golden_corpus.txt, made by this script from a fixed grammar, so the
numbers do not depend on the Python version's standard library.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).parent
CORPUS = HERE / "data" / "golden_corpus.txt"
GOLDEN = HERE / "data" / "golden_losses.json"
OVERRIDES = {"data.path": str(CORPUS), "train.steps": 30, "train.eval_every": 30}


def make_corpus() -> str:
    """Pseudo-text from a tiny grammar with a fixed seed (deterministic across Pythons)."""
    rng = random.Random(1234)
    nouns = ["width", "model", "layer", "rate", "step", "loss", "batch", "token", "head"]
    verbs = ["scales", "grows", "moves", "drifts", "holds", "shrinks", "transfers"]
    adjs = ["small", "large", "hidden", "stable", "optimal", "wide", "narrow"]
    lines = []
    for _ in range(3000):
        words = [
            rng.choice(adjs),
            rng.choice(nouns),
            rng.choice(verbs),
            "with the",
            rng.choice(adjs),
            rng.choice(nouns),
        ]
        lines.append(" ".join(words) + rng.choice([".", "!", "?", ";"]))
    return "\n".join(lines) + "\n"


def run() -> list[float]:
    from hptransfer.config import load_recipe
    from hptransfer.train import train

    cfg = load_recipe(HERE.parent / "src" / "hptransfer" / "recipes" / "tiny.toml", OVERRIDES)
    return train(cfg)["losses"]


if __name__ == "__main__":
    if "--write" in sys.argv:
        CORPUS.write_text(make_corpus())
        GOLDEN.write_text(json.dumps({"losses": run()}, indent=1) + "\n")
        print(f"wrote {GOLDEN}")
    else:
        print(json.dumps(run()))
