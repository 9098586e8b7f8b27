"""Tokenizers: text -> token ids, for the corpora of hptransfer.data.

Three kinds, chosen by ``data.tokenizer``:

- ``byte``: the UTF-8 bytes themselves (256 ids); no training, no dependency. The default.
- ``bpe``: a byte-level BPE trained on the corpus (Hugging Face ``tokenizers``, the hf extra).
  Byte-level means every byte is in the base alphabet, so decode(encode(text)) == text for
  any UTF-8 text. It is saved as ``tokenizer.json`` in the run directory and reloaded from
  there, so a run (or a run that reuses it via ``data.tokenizer = "RUN_DIR/tokenizer.json"``)
  always sees the same ids.
- a local path: a ``tokenizer.json`` file, or a directory that holds one (the layout of a
  Hugging Face model repository downloaded by hand).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hptransfer.config import ConfigError

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_BPE_VOCAB = 4096
ENCODE_CHUNK_CHARS = 1 << 20  # encode in ~1 MB pieces cut after a newline (bounded memory)


class Tokenizer(Protocol):
    """What a corpus needs from a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def encode_bytes(self, raw: bytes) -> np.ndarray: ...

    def decode(self, ids: np.ndarray) -> str: ...


def utf8(raw: bytes) -> str:
    """``raw`` decoded as UTF-8, or a ConfigError saying which byte is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"data.tokenizer: the corpus is not UTF-8 text (byte {e.start}); "
            "use data.tokenizer = byte"
        ) from None


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocabulary 256)."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return self.encode_bytes(text.encode("utf-8"))

    def encode_bytes(self, raw: bytes) -> np.ndarray:
        """Any bytes, UTF-8 or not, are tokens (a read-only view, no copy)."""
        return np.frombuffer(raw, dtype=np.uint8)

    def decode(self, ids: np.ndarray) -> str:
        """Text of the bytes; a window cut inside a character shows U+FFFD there."""
        return np.asarray(ids, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer``; ids as uint16 (uint32 above 65536 ids)."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.vocab_size: int = tok.get_vocab_size()

    @property
    def dtype(self) -> type:
        return np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def encode(self, text: str) -> np.ndarray:
        pieces = self.tok.encode_batch(list(_pieces(text)), add_special_tokens=False)
        ids: list[np.ndarray] = [np.asarray(p.ids, dtype=self.dtype) for p in pieces]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=self.dtype)

    def encode_bytes(self, raw: bytes) -> np.ndarray:
        return self.encode(utf8(raw))

    def decode(self, ids: np.ndarray) -> str:
        return self.tok.decode(np.asarray(ids).tolist(), skip_special_tokens=False)

    def save(self, path: Path) -> None:
        """Write tokenizer.json atomically (a temporary name, then rename)."""
        tmp = path.with_name(path.name + ".tmp")
        self.tok.save(str(tmp))
        tmp.replace(path)


def _pieces(text: str) -> Iterator[str]:
    """``text`` cut after a newline about every ENCODE_CHUNK_CHARS characters (always the same
    cuts for the same text, so encoding is deterministic)."""
    start = 0
    while start < len(text):
        cut = text.find("\n", start + ENCODE_CHUNK_CHARS)
        end = len(text) if cut < 0 else cut + 1
        yield text[start:end]
        start = end


def _tokenizers_lib() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ConfigError(
            "data.tokenizer needs the tokenizers package: pip install 'hptransfer[hf]'"
        ) from None
    return tokenizers


def train_bpe(text: str, vocab_size: int = DEFAULT_BPE_VOCAB) -> HFTokenizer:
    """A byte-level BPE with at most ``vocab_size`` ids trained on ``text`` (fewer when the text
    has fewer distinct merges). No special tokens, no normalization: decoding gives the text
    back exactly."""
    return _train_bpe_cached(text, vocab_size)


@functools.lru_cache(maxsize=2)  # a sweep in one process trains each corpus once
def _train_bpe_cached(text: str, vocab_size: int) -> HFTokenizer:
    tk = _tokenizers_lib()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_pieces(text), trainer=trainer, length=None)
    return HFTokenizer(tok)


def load_tokenizer(path: str | Path) -> HFTokenizer:
    """A tokenizer from a local ``tokenizer.json`` or a directory holding one."""
    p = Path(path)
    file = p / TOKENIZER_FILE if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(f"data.tokenizer: no {TOKENIZER_FILE} at {path}")
    tk = _tokenizers_lib()
    try:
        return HFTokenizer(tk.Tokenizer.from_file(str(file)))
    except Exception as e:  # the Rust library raises a bare Exception on a malformed file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"data.tokenizer: cannot read {file}: {first}") from None


def resolve_tokenizer(
    name: str, vocab_size: int, raw: bytes | None, run_dir: str | Path | None = None
) -> Tokenizer:
    """The tokenizer ``data.tokenizer = name`` asks for.

    For bpe: reloaded from ``run_dir/tokenizer.json`` when that exists, else trained on the
    corpus ``raw`` (UTF-8) and saved there (when ``run_dir`` is given).
    """
    if name == "byte":
        return ByteTokenizer()
    if name != "bpe":
        return load_tokenizer(name)
    saved = Path(run_dir) / TOKENIZER_FILE if run_dir is not None else None
    if saved is not None and saved.is_file():
        return load_tokenizer(saved)
    if raw is None:
        raise ValueError("training a BPE tokenizer needs the corpus text")
    tok = train_bpe(utf8(raw), vocab_size or DEFAULT_BPE_VOCAB)
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tok.save(saved)
    return tok
