"""Checks of a whole sweep before its first run starts: what every run needs from the machine.

Each expanded run's config is validated as the spec expands (:meth:`SweepSpec.expand`); this
adds what a config alone cannot tell: that the device the runs train on is present, that
every data file is long enough for the longest sequence a run asks of it, and that every run
fits in the memory of its device. A failure is one ConfigError line naming the key or file,
raised before the results directory is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hptransfer.config import ConfigError, DataConfig, RunConfig
from hptransfer.sweep.spec import Run


def check_runs(runs: Sequence[Run]) -> None:
    """Raise ConfigError when some run of ``runs`` cannot start on this machine."""
    check_device(runs)
    check_data(runs)
    check_memory([run.config for run in runs])


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


def check_memory(configs: Sequence[RunConfig], available: int | None = None) -> None:
    """No run needs more memory than its device has (``available`` bytes; default: this
    machine's memory, or the GPU's with train.device = "cuda"), by the lower bound `needs`
    (for one process: under torchrun each rank holds a share of the batch).

    A width, vocabulary, batch or eval set too large to allocate would otherwise end in an
    allocator error (or the kernel's OOM killer) after the run directory is written. The
    refusal names the key of the largest term.
    """
    seen: set[tuple] = set()
    for cfg in configs:
        sections = (cfg.model, cfg.data, cfg.train)  # what the memory depends on
        if sections in seen:
            continue
        seen.add(sections)
        terms = needs(cfg)
        total = available if available is not None else device_memory(cfg.train.device)
        if sum(terms.values()) > total:
            key = max(terms, key=terms.__getitem__)
            raise ConfigError(
                f"{key} = {_value(cfg, key)}: a run needs at least {_gib(sum(terms.values()))} "
                f"({_gib(terms[key])} for {_WHAT[key]}), more than the {_gib(total)} of "
                f"{cfg.train.device} memory here"
            )


_WHAT = {
    "model.width": "parameters and gradients",
    "data.vocab_size": "the embedding, its gradient and the logits",
    "train.batch_size": "one batch's activations",
    "train.eval_batches": "the eval batches",
}


def needs(cfg: RunConfig) -> dict[str, int]:
    """A lower bound on a run's memory in bytes, by the key that sets each term: parameters
    and their gradients (``2 P e``, e bytes per element; the model is built on the meta device
    to count P), the logits of a batch (``B T V 4``) and one hidden state per block
    (``B T D L e``), and the eval set (``2 E B T 8``, int64 inputs and targets). With
    data.vocab_size set, the parameters that grow with the vocabulary (embedding, unembedding)
    and the logits are charged to it. Optimizer state, attention scores and temporaries come
    on top."""
    from hptransfer.data import config_vocab_size

    m, t = cfg.model, cfg.train
    vocab = config_vocab_size(cfg.data)
    params = _count_params(cfg, vocab)
    by_vocab = params - _count_params(cfg, 1)
    e = 8 if t.dtype == "float64" else 4
    tokens = t.batch_size * t.seq_len
    terms = {
        "model.width": 2 * (params - by_vocab) * e,
        "train.batch_size": tokens * m.width * m.depth * e,
        "train.eval_batches": 2 * t.eval_batches * tokens * 8,
        "data.vocab_size": 2 * by_vocab * e + tokens * vocab * 4,
    }
    if not cfg.data.vocab_size:  # the tokenizer's own vocabulary: width and batch set it
        terms["model.width"] += 2 * by_vocab * e
        terms["train.batch_size"] += tokens * vocab * 4
        del terms["data.vocab_size"]
    return terms


def _count_params(cfg: RunConfig, vocab: int) -> int:
    """Parameters of the run's model with vocabulary ``vocab``, built on the meta device."""
    import torch

    from hptransfer.assemble import model_factory

    with torch.device("meta"):
        model = model_factory(cfg, vocab)(cfg.model.width)
    return sum(p.numel() for p in model.parameters())


def device_memory(device: str) -> int:
    """Bytes of memory on ``device``: the GPU's, or this machine's (less a cgroup limit)."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        return min(total, int(Path("/sys/fs/cgroup/memory.max").read_text()))
    except (OSError, ValueError):  # no cgroup v2 limit ("max") or no such file
        return total


def _value(cfg: RunConfig, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
