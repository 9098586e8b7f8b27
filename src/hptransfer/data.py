"""Corpora and deterministic batches.

By default tokens are bytes (vocabulary 256), so any text file is a corpus with no tokenizer to
train. The built-in offline default is the Python standard library's own source. load_corpus
also reads JSON lines, Parquet and token files and Hugging Face datasets (hptransfer.sources)
with a BPE or local tokenizer (hptransfer.tokenizers). Batches are drawn
from a numpy Generator seeded by (seed, step): any step's batch can be regenerated on its own,
which is what resuming a run needs, and the same seed always gives the same batches.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hptransfer.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from hptransfer.config import DataConfig
    from hptransfer.tokenizers import Tokenizer

VOCAB_SIZE = 256
CHUNK_BYTES = 64 * 1024  # split granularity: chunk i is eval when i % EVAL_EVERY == EVAL_EVERY - 1
EVAL_EVERY = 20  # -> 5% of chunks are eval
SMALL_EVAL_FRACTION = 0.1  # files with fewer than EVAL_EVERY chunks: the last 10% of bytes


@functools.cache
def default_corpus() -> bytes:
    """The source of every top-level *.py file of the standard library, sorted by file name.

    Each file's bytes are followed by b"\\n". Subdirectories are not included. About 4.7 MB
    (4,698,556 bytes from 168 files) on CPython 3.11; the exact bytes depend on the Python
    version, which is why Corpus.source records it. Cached per process.
    """
    stdlib = sysconfig.get_paths()["stdlib"]
    names = sorted(
        n
        for n in os.listdir(stdlib)
        if n.endswith(".py") and os.path.isfile(os.path.join(stdlib, n))
    )
    parts = []
    for name in names:
        with open(os.path.join(stdlib, name), "rb") as f:
            parts.append(f.read())
        parts.append(b"\n")
    return b"".join(parts)


@dataclass(frozen=True, eq=False)
class Corpus:
    """A corpus split into train and eval tokens."""

    train: np.ndarray
    """Tokens for training (about 95% of the text): uint8 bytes, else uint16 / uint32 ids."""
    eval: np.ndarray
    """Tokens held out for evaluation (about 5%; 10% for small files; or data.eval_path)."""
    sha256: str
    """Hex sha256 of the full text bytes (token files: the file's bytes), before the split."""
    source: str
    """"stdlib:<python version>" for the default corpus, "hf:NAME/SPLIT", else the file path."""
    vocab_size: int = VOCAB_SIZE
    """Token ids are below this; the model's vocabulary."""
    tokenizer: Tokenizer | None = None
    """Turns ids back into text; None for token files."""


def split_tokens(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/eval split of a token array.

    Chunks of 64 KiB; chunk i goes to eval when i % 20 == 19, else to train, both kept in
    order. A text of fewer than 20 chunks (where that rule would leave eval empty) gives its
    last 10% of bytes to eval instead.
    """
    n_chunks = -(-len(tokens) // CHUNK_BYTES)
    if n_chunks < EVAL_EVERY:
        cut = len(tokens) - int(len(tokens) * SMALL_EVAL_FRACTION)
        return tokens[:cut].copy(), tokens[cut:].copy()
    chunks = [tokens[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES] for i in range(n_chunks)]
    is_eval = [i % EVAL_EVERY == EVAL_EVERY - 1 for i in range(n_chunks)]
    train = np.concatenate([c for c, e in zip(chunks, is_eval) if not e])
    eval_ = np.concatenate([c for c, e in zip(chunks, is_eval) if e])
    return train, eval_


def load_text(path: str | None) -> Corpus:
    """Load a text file (or the default stdlib corpus when path is None or "") as bytes.

    Raises FileNotFoundError "data.path: no such file: P" when the file is missing or
    cannot be read.
    """
    if not path:
        text = default_corpus()
        source = f"stdlib:{platform.python_version()}"
    else:
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError:
            raise FileNotFoundError(f"data.path: no such file: {path}") from None
        source = str(path)
    tokens = np.frombuffer(text, dtype=np.uint8)
    train, eval_ = split_tokens(tokens)
    return Corpus(train=train, eval=eval_, sha256=hashlib.sha256(text).hexdigest(), source=source)


def load_corpus(cfg: DataConfig, run_dir: str | Path | None = None) -> Corpus:
    """The corpus ``cfg`` (the [data] section) describes, tokenized and split.

    A bpe tokenizer is reloaded from, or trained and saved to, ``run_dir/tokenizer.json``. The
    default config gives exactly ``load_text(cfg.path)``. Raises ConfigError for anything the
    user can fix (missing extra, unreachable hub, a token id outside data.vocab_size).
    """
    from hptransfer import sources
    from hptransfer.config import ConfigError
    from hptransfer.tokenizers import resolve_tokenizer

    fmt = cfg.resolved_format()
    if fmt == "tokens":
        train, eval_, top = _token_files(cfg)
        sha = sources.file_sha256(cfg.path)
        if cfg.vocab_size and cfg.vocab_size < top:
            raise ConfigError(f"data.vocab_size={cfg.vocab_size} but {cfg.path} holds id {top - 1}")
        if eval_ is None:
            train, eval_ = split_tokens(train)
        return Corpus(train, eval_, sha, cfg.path, max(top, cfg.vocab_size), None)
    if cfg.dataset:
        raw = sources.stream_dataset(
            cfg.dataset, cfg.dataset_split, cfg.text_field, cfg.dataset_chars
        ).encode("utf-8")
        source = sources.dataset_source(cfg.dataset, cfg.dataset_split)[2]
    elif cfg.path:
        raw, source = sources.read_text(cfg.path, fmt, cfg.text_field), cfg.path
    else:
        raw, source = default_corpus(), f"stdlib:{platform.python_version()}"
    raw_eval = sources.read_text(cfg.eval_path, fmt, cfg.text_field) if cfg.eval_path else None
    digest = hashlib.sha256(raw)  # of raw + raw_eval, without joining them
    if raw_eval:
        digest.update(raw_eval)
    sha = digest.hexdigest()
    tok = resolve_tokenizer(cfg.tokenizer, cfg.vocab_size, raw, run_dir)
    if cfg.tokenizer != "bpe" and 0 < cfg.vocab_size < tok.vocab_size:
        raise ConfigError(f"data.vocab_size={cfg.vocab_size} < the tokenizer's {tok.vocab_size}")
    tokens = tok.encode_bytes(raw)
    if raw_eval is None:
        train, eval_ = split_tokens(tokens)
    else:
        train, eval_ = tokens, tok.encode_bytes(raw_eval)
    return Corpus(train, eval_, sha, source, max(tok.vocab_size, cfg.vocab_size), tok)


def _token_files(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray | None, int]:
    """A token-file corpus's train and (optional) eval ids, memory-mapped, and largest id + 1."""
    from hptransfer import sources

    train = sources.read_tokens(cfg.path, cfg.token_dtype)
    eval_ = sources.read_tokens(cfg.eval_path, cfg.token_dtype) if cfg.eval_path else None
    return train, eval_, int(max(train.max(), 0 if eval_ is None else eval_.max())) + 1


def config_vocab_size(cfg: DataConfig) -> int:
    """The vocabulary ``cfg`` gives without loading the corpus (for building a model to list
    its roles): the tokenizer's size, bpe's target size, or a token file's largest id + 1."""
    from hptransfer.tokenizers import DEFAULT_BPE_VOCAB, load_tokenizer

    if cfg.resolved_format() == "tokens":
        return cfg.vocab_size or _token_files(cfg)[2]
    if cfg.tokenizer == "byte":
        return max(VOCAB_SIZE, cfg.vocab_size)
    if cfg.tokenizer == "bpe":
        return cfg.vocab_size or DEFAULT_BPE_VOCAB
    return max(load_tokenizer(cfg.tokenizer).vocab_size, cfg.vocab_size)


def _check_length(tokens: np.ndarray, seq_len: int) -> None:
    if seq_len < 1:
        raise ConfigError(f"data seq_len={seq_len} must be at least 1")
    if len(tokens) < seq_len + 1:
        raise ConfigError(
            f"corpus of {len(tokens)} tokens is too short for seq_len={seq_len} "
            f"(needs at least {seq_len + 1}; see data.path, train.seq_len)"
        )


def _gather(
    tokens: np.ndarray, offsets_B: np.ndarray, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fancy-index gather of (B, T+1) windows -> (x_BxT, y_BxT) int64, y = x shifted by 1."""
    import torch

    idx_BxT1 = offsets_B[:, None] + np.arange(seq_len + 1)
    win_BxT1 = torch.from_numpy(tokens[idx_BxT1].astype(np.int64))
    return win_BxT1[:, :-1].contiguous(), win_BxT1[:, 1:].contiguous()


class Batches:
    """Random training batches, reproducible per (seed, step) without replaying earlier steps.

    Args:
        tokens: 1-D uint8 token array (e.g. Corpus.train).
        batch_size: sequences per batch (B).
        seq_len: tokens per sequence (T); the corpus needs at least T + 1 tokens.
        seed: non-negative data seed.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int) -> None:
        _check_length(tokens, seq_len)
        if batch_size < 1:
            raise ConfigError(f"data batch_size={batch_size} must be at least 1")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of `step`: (x_BxT, y_BxT) int64 tensors with y[:, t] = x[:, t + 1]'s source."""
        rng = np.random.default_rng((self.seed, step))
        n_starts = len(self.tokens) - self.seq_len  # offsets 0 .. n_starts - 1 fit T + 1 tokens
        offsets_B = rng.integers(0, n_starts, size=self.batch_size)
        return _gather(self.tokens, offsets_B, self.seq_len)


def eval_batches(
    tokens: np.ndarray, n_batches: int, batch_size: int, seq_len: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed evaluation batches: n_batches * batch_size evenly spaced windows, no seed involved."""
    _check_length(tokens, seq_len)
    n = n_batches * batch_size
    offsets = np.linspace(0, len(tokens) - seq_len - 1, num=n).round().astype(np.int64)
    return [
        _gather(tokens, offsets[i * batch_size : (i + 1) * batch_size], seq_len)
        for i in range(n_batches)
    ]
