"""Tests for corpus formats and tokenizers (hptransfer.data.load_corpus, hptransfer.sources,
hptransfer.tokenizers): JSON lines, Parquet, token files, BPE, local tokenizers, and hub paths
that must fail fast without a network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hptransfer import tokenizers as tok_mod
from hptransfer.config import ConfigError, DataConfig, RunConfig
from hptransfer.data import Batches, eval_batches, load_corpus, load_text

CORPUS = Path(__file__).parent / "data" / "golden_corpus.txt"
DOCS = ["first document,\nwith two lines", "second: caf\u00e9 \u2014 \u00fcber", "third"] * 20


def same_corpus(a, b) -> None:
    assert np.array_equal(a.train, b.train) and np.array_equal(a.eval, b.eval)
    for step in (0, 7):
        for x, y in zip(Batches(a.train, 4, 16, 3).get(step), Batches(b.train, 4, 16, 3).get(step)):
            assert x.equal(y)
    for (xa, ya), (xb, yb) in zip(eval_batches(a.eval, 2, 4, 16), eval_batches(b.eval, 2, 4, 16)):
        assert xa.equal(xb) and ya.equal(yb)


def test_default_config_is_exactly_load_text() -> None:
    a, b = load_corpus(DataConfig(path=str(CORPUS))), load_text(str(CORPUS))
    same_corpus(a, b)
    assert (a.sha256, a.source, a.vocab_size) == (b.sha256, b.source, 256)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_token_file_matches_the_text_loader(tmp_path: Path, dtype: str) -> None:
    raw = CORPUS.read_bytes()
    (tmp_path / "train.bin").write_bytes(np.frombuffer(raw, np.uint8).astype(dtype).tobytes())
    tokens = load_corpus(DataConfig(path=str(tmp_path / "train.bin"), token_dtype=dtype))
    text = load_corpus(DataConfig(path=str(CORPUS)))
    same_corpus(tokens, text)
    assert tokens.train.dtype == np.dtype(dtype) and tokens.tokenizer is None
    assert tokens.vocab_size == int(np.frombuffer(raw, np.uint8).max()) + 1  # largest id + 1


def test_token_files_with_a_separate_eval_file_and_vocab_checks(tmp_path: Path) -> None:
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(5000, 5100, dtype=np.uint16).tofile(tmp_path / "val.bin")
    cfg = DataConfig(path=str(tmp_path / "train.bin"), eval_path=str(tmp_path / "val.bin"))
    c = load_corpus(cfg)
    assert isinstance(c.train, np.memmap) and len(c.train) == 1000  # no copy, no split
    assert list(c.eval[:2]) == [5000, 5001] and c.vocab_size == 5100
    assert load_corpus(DataConfig(**{**vars(cfg), "vocab_size": 50304})).vocab_size == 50304
    with pytest.raises(ConfigError, match="vocab_size=4096 but .* holds id 5099"):
        load_corpus(DataConfig(**{**vars(cfg), "vocab_size": 4096}))
    (tmp_path / "odd.bin").write_bytes(b"abc")
    with pytest.raises(ConfigError, match="not a whole number of uint16 tokens"):
        load_corpus(DataConfig(path=str(tmp_path / "odd.bin")))


def test_jsonl_and_parquet_give_the_documents_joined_by_a_blank_line(tmp_path: Path) -> None:
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": d}) + "\n\n" for d in DOCS))
    (tmp_path / "docs.txt").write_text("\n\n".join(DOCS))
    text = load_corpus(DataConfig(path=str(tmp_path / "docs.txt")))
    same_corpus(load_corpus(DataConfig(path=str(tmp_path / "docs.jsonl"), text_field="body")), text)
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(
        pa.table({"body": DOCS, "id": list(range(len(DOCS)))}), tmp_path / "docs.parquet"
    )
    same_corpus(
        load_corpus(DataConfig(path=str(tmp_path / "docs.parquet"), text_field="body")), text
    )
    with pytest.raises(ConfigError, match="no column 'text' .*columns: body, id"):
        load_corpus(DataConfig(path=str(tmp_path / "docs.parquet")))
    with pytest.raises(ConfigError, match=r"docs.jsonl:1: no string field 'text'"):
        load_corpus(DataConfig(path=str(tmp_path / "docs.jsonl")))


def test_bpe_round_trips_the_corpus_and_is_reloaded_from_the_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tokenizers")
    cfg = DataConfig(path=str(CORPUS), tokenizer="bpe", vocab_size=400)
    first = load_corpus(cfg, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and first.vocab_size == 400
    assert 300 < first.tokenizer.vocab_size <= 400 and first.train.dtype == np.uint16
    n_bytes = CORPUS.stat().st_size
    assert len(first.train) + len(first.eval) < 0.5 * n_bytes  # merges were learned
    text = CORPUS.read_text()
    ids = first.tokenizer.encode(text)
    assert first.tokenizer.decode(ids) == text  # exact round trip
    assert np.array_equal(ids, np.concatenate([first.train, first.eval]))

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("the saved tokenizer must be reloaded, not retrained")

    monkeypatch.setattr(tok_mod, "train_bpe", no_training)
    again = load_corpus(cfg, tmp_path)
    same_corpus(again, first)
    # another run may point at the saved file (or its directory) as a local tokenizer
    for path in (tmp_path / "tokenizer.json", tmp_path):
        same_corpus(load_corpus(DataConfig(path=str(CORPUS), tokenizer=str(path))), first)
    size = first.tokenizer.vocab_size  # <= 400: the test corpus has fewer merges to learn
    with pytest.raises(ConfigError, match=f"vocab_size=300 < the tokenizer's {size}"):
        load_corpus(DataConfig(path=str(CORPUS), tokenizer=str(tmp_path), vocab_size=300))


def test_training_with_bpe_sizes_the_model_from_the_tokenizer(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from hptransfer.train import train

    cfg = RunConfig().replace(
        **{
            "model.width": 32,
            "model.depth": 1,
            "model.head_dim": 16,
            "param.base_width": 32,
            "train.steps": 3,
            "train.batch_size": 2,
            "train.seq_len": 16,
            "train.eval_every": 3,
            "train.eval_batches": 1,
            "data.path": str(CORPUS),
            "data.tokenizer": "bpe",
            "data.vocab_size": 300,
        }
    )
    s = train(cfg.validate(), tmp_path)
    assert s["status"] == "ok" and (tmp_path / "tokenizer.json").is_file()
    assert s["n_params"] == 32 * 32 * 12 + 2 * 300 * 32 + 16 * 32 + 3 * 32  # vocab 300 both ends


def test_non_utf8_text_needs_the_byte_tokenizer(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9\n".encode("latin-1") * 50)
    assert load_corpus(DataConfig(path=str(tmp_path / "latin1.txt"))).vocab_size == 256
    with pytest.raises(ConfigError, match="not UTF-8 text .*data.tokenizer = byte"):
        load_corpus(DataConfig(path=str(tmp_path / "latin1.txt"), tokenizer="bpe"))


def test_a_local_dataset_directory_streams_through_datasets(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    (tmp_path / "ds").mkdir()
    rows = [{"text": f"document {i}: " + "words " * 40} for i in range(30)]
    (tmp_path / "ds" / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = load_corpus(DataConfig(dataset=str(tmp_path / "ds"), dataset_chars=1000))
    text = (c.train.tobytes() + c.eval.tobytes()).decode()
    n_docs = text.count("document ")
    assert text.startswith("document 0: words") and 1000 <= len(text) < 1000 + 260
    assert n_docs == 1000 // 252 + 1  # whole documents until 1000 characters (252 each)
    assert c.source == f"hf:{tmp_path / 'ds'}/train"


def one_line_config_error(fn) -> str:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        fn()
    assert time.perf_counter() - start < 2.0  # fast: no retries, no download attempt
    msg = str(e.value)
    assert "\n" not in msg and "data.path" in msg  # says how to use local files
    return msg


def test_hub_paths_fail_fast_with_one_line_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = one_line_config_error(lambda: load_corpus(DataConfig(dataset="no-such-org/no-such-set")))
    assert "HF_HUB_OFFLINE" in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for var in ("http_proxy", "https_proxy", "all_proxy"):  # a proxy skips the direct check
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    msg = one_line_config_error(lambda: load_corpus(DataConfig(dataset="c4")))
    assert "cannot reach the Hugging Face hub at http://127.0.0.1:9" in msg


def test_cli_exits_2_with_one_line_for_an_unreachable_dataset(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\ndataset = "fineweb-edu"\n[train]\nsteps = 1\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "hptransfer", "train", str(recipe), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.dataset='fineweb-edu'" in lines[0] and "data.path" in lines[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset": "c4", "path": str(CORPUS)}, "exclusive"),
        ({"path": "x.bin", "format": "tokens"}, "no such file"),
        ({"tokenizer": "no/such/tokenizer.json"}, "expected byte, bpe or a local tokenizer"),
        ({"path": str(CORPUS), "format": "tokens", "tokenizer": "bpe"}, "already tokenized"),
        ({"tokenizer": "bpe", "vocab_size": 200}, "bpe needs more than 256"),
        ({"format": "csv"}, "data.format: unknown value"),
    ],
)
def test_bad_data_config_is_a_one_line_config_error(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(**overrides).validate()
