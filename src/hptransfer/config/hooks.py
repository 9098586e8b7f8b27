"""The user's callables a config names (model.factory, model.loss, model.batch):
"package.module:name" or "path/file.py:name", parsed here and loaded on demand."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

from hptransfer.errors import ConfigError


def split_callable(text: str) -> tuple[str, str]:
    """'where:name' -> (where, name); ('', '') when ``text`` has no such form."""
    where, sep, name = text.rpartition(":")
    if not sep or not where.strip() or not name.isidentifier():
        return "", ""
    return where.strip(), name


def load_callable(text: str, key: str) -> Any:
    """The callable ``text`` names: "package.module:name" (imported) or "path/file.py:name"
    (loaded from that file, relative to the current directory, once per process). Refuses
    with a one-line ConfigError naming ``key`` when the module cannot be imported, lacks the
    name, or the name is not callable."""
    where, name = split_callable(text)
    if not name:
        raise ConfigError(f"{key}: expected 'package.module:function', got {text!r}")
    try:
        if where.endswith(".py") or "/" in where or "\\" in where:
            module = _load_file(Path(where), key)
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as e:  # the user's module failed to import: name it and the reason
        raise ConfigError(f"{key}: cannot import {where!r}: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise ConfigError(f"{key}: {where!r} has no attribute {name!r}")
    if not callable(fn):
        raise ConfigError(f"{key}: {where}:{name} is not callable ({type(fn).__name__})")
    return fn


def _load_file(path: Path, key: str) -> types.ModuleType:
    """The module of a Python file, imported once per process under a name made from its
    absolute path (so every load of one file gives the same functions)."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"{key}: no such file: {path}")
    mod_name = "hptransfer_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{key}: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module
