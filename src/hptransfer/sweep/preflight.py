"""Checks of a whole sweep before its first run starts: what every run needs from the machine.

Each expanded run's config is validated as the spec expands (:meth:`SweepSpec.expand`); this
adds what a config alone cannot tell: that the device the runs train on is present, and that
every data file is long enough for the longest sequence a run asks of it. A failure is one
ConfigError line naming the key or file, raised before the results directory is written.
"""

from __future__ import annotations

from collections.abc import Sequence

from hptransfer.config import ConfigError, DataConfig
from hptransfer.sweep.spec import Run


def check_runs(runs: Sequence[Run]) -> None:
    """Raise ConfigError when some run of ``runs`` cannot start on this machine."""
    check_device(runs)
    check_data(runs)


def check_device(runs: Sequence[Run]) -> None:
    """train.device = "cuda" needs a CUDA device here (torch is imported only then)."""
    if not any(run.config.train.device == "cuda" for run in runs):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError('train.device = "cuda" but this machine has no CUDA device')


def check_data(runs: Sequence[Run]) -> None:
    """Every local data file holds more than seq_len tokens in both its train and eval parts.

    Each distinct [data] table is loaded once (as a run would load it). The built-in corpus,
    hub datasets and bpe tokenizers (whose training is a run's work) are left to the runs.
    """
    longest: dict[DataConfig, int] = {}
    for run in runs:
        data = run.config.data
        if data.path and not data.dataset and data.tokenizer != "bpe":
            longest[data] = max(longest.get(data, 0), run.config.train.seq_len)
    for data, seq_len in longest.items():
        from hptransfer.data import load_corpus

        try:
            corpus = load_corpus(data)
        except (OSError, ValueError) as e:
            raise ConfigError(f"data.path {data.path}: {e}") from None
        for part, tokens in (("train", corpus.train), ("eval", corpus.eval)):
            if len(tokens) < seq_len + 1:
                raise ConfigError(
                    f"data.path {data.path}: its {part} part holds {len(tokens)} tokens, too "
                    f"few for train.seq_len = {seq_len} (needs at least {seq_len + 1})"
                )
