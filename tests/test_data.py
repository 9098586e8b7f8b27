"""Tests for corpora and batches (hptransfer.data)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from hptransfer import data
from hptransfer.data import Batches, eval_batches, load_text, split_tokens


def test_default_corpus_nonempty_and_stable() -> None:
    text = data.default_corpus()
    assert len(text) > 1_000_000
    data.default_corpus.cache_clear()
    assert hashlib.sha256(data.default_corpus()).digest() == hashlib.sha256(text).digest()
    a, b = load_text(None), load_text("")
    assert a.sha256 == b.sha256 == hashlib.sha256(text).hexdigest()
    assert a.source.startswith("stdlib:")
    assert len(a.train) + len(a.eval) == len(text)


def test_split_large_deterministic_and_disjoint() -> None:
    chunk = data.CHUNK_BYTES
    n = 45 * chunk + 100  # 46 chunks: chunks 19 and 39 go to eval
    # each chunk filled with its own index, so we can see which chunks went where
    tokens = (np.arange(n) // chunk).astype(np.uint8)
    train, eval_ = split_tokens(tokens)
    assert len(train) + len(eval_) == n
    assert len(eval_) == 2 * chunk
    assert set(np.unique(eval_)) == {19, 39}
    assert not set(np.unique(train)) & {19, 39}
    assert np.all(np.diff(train.astype(int)) >= 0)  # order kept
    train2, eval2 = split_tokens(tokens)
    assert np.array_equal(train, train2) and np.array_equal(eval_, eval2)


def test_split_small_file_last_tenth() -> None:
    tokens = np.arange(1000, dtype=np.int64).astype(np.uint8)
    train, eval_ = split_tokens(tokens)
    assert len(train) == 900 and len(eval_) == 100
    assert np.array_equal(np.concatenate([train, eval_]), tokens)


def test_local_text_file(tmp_path: Path) -> None:
    text = b"hello world, " * 200
    path = tmp_path / "corpus.txt"
    path.write_bytes(text)
    corpus = load_text(str(path))
    assert corpus.source == str(path)
    assert corpus.sha256 == hashlib.sha256(text).hexdigest()
    assert corpus.train.dtype == np.uint8
    assert bytes(corpus.train) + bytes(corpus.eval) == text


def test_missing_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError) as err:
        load_text(missing)
    assert str(err.value) == f"data.path: no such file: {missing}"


def test_directory_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_text(str(tmp_path))


@pytest.fixture
def toks() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=5000).astype(np.uint8)


def test_same_seed_same_batches(toks: np.ndarray) -> None:
    a, b = Batches(toks, 4, 16, seed=1), Batches(toks, 4, 16, seed=1)
    for step in range(3):
        xa, ya = a.get(step)
        xb, yb = b.get(step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.get(0)[0], a.get(1)[0])


def test_different_seed_different_batches(toks: np.ndarray) -> None:
    x1, _ = Batches(toks, 4, 16, seed=1).get(0)
    x2, _ = Batches(toks, 4, 16, seed=2).get(0)
    assert not torch.equal(x1, x2)


def test_random_access_equals_sequential(toks: np.ndarray) -> None:
    seq = Batches(toks, 4, 16, seed=3)
    sequential = [seq.get(step) for step in range(6)]
    fresh = Batches(toks, 4, 16, seed=3)
    for step in (5, 2, 0):
        x, y = fresh.get(step)
        assert torch.equal(x, sequential[step][0]) and torch.equal(y, sequential[step][1])


def test_y_is_x_shifted(toks: np.ndarray) -> None:
    x, y = Batches(toks, 8, 16, seed=0).get(7)
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # every row is a real window of the corpus
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        window = np.concatenate([row_x, row_y[-1:]]).astype(np.uint8)
        starts = np.flatnonzero(toks == window[0])
        assert any(np.array_equal(toks[s : s + 17], window) for s in starts)


def test_eval_batches_fixed_and_cover(toks: np.ndarray) -> None:
    a = eval_batches(toks, n_batches=3, batch_size=2, seq_len=16)
    b = eval_batches(toks, n_batches=3, batch_size=2, seq_len=16)
    assert len(a) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (2, 16)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[:, 1:], ya[:, :-1])
    first, last = a[0][0][0], a[-1][1][-1]
    assert torch.equal(first, torch.from_numpy(toks[:16].astype(np.int64)))
    assert torch.equal(last, torch.from_numpy(toks[-16:].astype(np.int64)))


def test_corpus_exactly_long_enough() -> None:
    toks = np.arange(17, dtype=np.uint8)
    x, y = Batches(toks, 2, 16, seed=0).get(0)
    assert torch.equal(x[0], torch.arange(16)) and torch.equal(y[0], torch.arange(1, 17))


def test_too_short_corpus() -> None:
    toks = np.arange(16, dtype=np.uint8)
    for make in (lambda: Batches(toks, 2, 16, seed=0), lambda: eval_batches(toks, 1, 2, 16)):
        with pytest.raises(ValueError) as err:
            make()
        assert "too short" in str(err.value) and "\n" not in str(err.value)
