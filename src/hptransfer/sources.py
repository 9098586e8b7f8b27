"""Where a corpus's text comes from: local text, JSON lines and Parquet files, token files, and
Hugging Face datasets streamed from the hub.

Documents (JSON lines rows, Parquet rows, hub rows) are joined with a blank line between them
into one text, which hptransfer.data tokenizes and splits like a plain text file. Token files
are read as they are (memory-mapped). Every failure a user can fix is a one-line ConfigError;
a hub dataset is only tried after a quick check that the hub is reachable, so a machine
without network fails in well under a second instead of retrying downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from hptransfer.config import ConfigError

DOC_SEPARATOR = "\n\n"
DATASET_ALIASES = {
    "c4": ("allenai/c4", "en"),
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT"),
}
HUB_TIMEOUT_S = 3.0
LOCAL_HINT = (
    "download it where the hub is reachable and set data.path to a local .jsonl, .parquet or "
    "text file"
)


def read_text(path: str | Path, fmt: str, text_field: str = "text") -> bytes:
    """The bytes of a text file, or the documents of a JSON lines / Parquet file joined by a
    blank line (UTF-8)."""
    if fmt == "text":
        try:
            return Path(path).read_bytes()
        except OSError:
            raise ConfigError(f"data.path: cannot read {path}") from None
    docs = read_jsonl(path, text_field) if fmt == "jsonl" else read_parquet(path, text_field)
    return DOC_SEPARATOR.join(docs).encode("utf-8")


def read_jsonl(path: str | Path, text_field: str) -> list[str]:
    """The ``text_field`` string of every non-blank line (each a JSON object)."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            text = row.get(text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise ConfigError(
                    f"{path}:{lineno}: no string field {text_field!r} (set data.text_field)"
                )
            docs.append(text)
    return docs


def read_parquet(path: str | Path, text_field: str) -> list[str]:
    """The ``text_field`` column of a Parquet file."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading Parquet needs pyarrow: pip install 'hptransfer[hf]'") from None
    schema = pq.read_schema(path)
    if text_field not in schema.names:
        raise ConfigError(
            f"{path}: no column {text_field!r} (set data.text_field; columns: "
            f"{', '.join(schema.names)})"
        )
    docs = pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    return [d for d in docs if d is not None]


def read_tokens(path: str | Path, dtype: str) -> np.ndarray:
    """A headerless file of little-endian token ids (nanoGPT's train.bin), memory-mapped."""
    dt = np.dtype(dtype).newbyteorder("<")
    size = Path(path).stat().st_size
    if size % dt.itemsize:
        raise ConfigError(
            f"data.path: {path} has {size} bytes, not a whole number of {dtype} tokens "
            "(check data.token_dtype)"
        )
    if size == 0:
        raise ConfigError(f"data.path: {path} is empty")
    return np.memmap(path, dtype=dt, mode="r")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces (token files may exceed memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def dataset_source(name: str, split: str) -> tuple[str, str | None, str]:
    """(repository or local path, config name or None, a printable source) for data.dataset."""
    repo, config = DATASET_ALIASES.get(name, (name, None))
    if config is None and ":" in name and not Path(name).exists():
        repo, config = name.split(":", 1)
    return repo, config, f"hf:{repo}{':' + config if config else ''}/{split}"


def stream_dataset(name: str, split: str, text_field: str, max_chars: int) -> str:
    """The first documents of a Hugging Face dataset, streamed, until ``max_chars`` characters,
    joined by a blank line. ``name`` may also be a local dataset directory (no network)."""
    repo, config, _ = dataset_source(name, split)
    if not Path(repo).exists():
        check_hub(name)
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "data.dataset needs the datasets package: pip install 'hptransfer[hf]'"
        ) from None
    docs: list[str] = []
    total = 0
    try:
        rows = datasets.load_dataset(repo, config, split=split, streaming=True)
        for row in rows:
            text = row.get(text_field)
            if not isinstance(text, str):
                raise ConfigError(
                    f"data.dataset={name!r}: rows have no string field {text_field!r} "
                    f"(set data.text_field; fields: {', '.join(row)})"
                )
            docs.append(text)
            total += len(text)
            if total >= max_chars:
                break
    except ConfigError:
        raise
    except Exception as e:  # network, missing dataset, bad config: all are the user's to fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"data.dataset={name!r}: cannot stream it ({first}); {LOCAL_HINT}"
        ) from None
    if not docs:
        raise ConfigError(f"data.dataset={name!r}: split {split!r} has no documents")
    return DOC_SEPARATOR.join(docs)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def check_hub(name: str) -> None:
    """Raise a one-line ConfigError unless the Hugging Face hub can be reached: offline mode
    (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) or no TCP connection to HF_ENDPOINT within
    HUB_TIMEOUT_S seconds. Behind a proxy (HTTPS_PROXY / ALL_PROXY) a direct connection says
    nothing, so only offline mode is checked there."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _env_true(var):
            raise ConfigError(
                f"data.dataset={name!r}: {var} is set, so the hub is off; {LOCAL_HINT}"
            )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urllib.parse.urlsplit(endpoint)
    if urllib.request.getproxies().get(url.scheme) or urllib.request.getproxies().get("all"):
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=HUB_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            f"data.dataset={name!r}: cannot reach the Hugging Face hub at {endpoint} ({reason}); "
            f"{LOCAL_HINT}"
        ) from None
