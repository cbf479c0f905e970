"""Atomic writes: a temporary file beside the target, fsync, rename, so a process killed at any
moment leaves the previous file intact (run files, checkpoints, registry.toml, summaries).

No torch here, unlike checkpoint.py, so the modules ``klm --help`` imports can write files too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` writes the file's content to the path ``tmp`` beside ``path``, which then
    replaces ``path`` whole (after an fsync), or not at all: a writer that streams a large
    file (safetensors' ``save_file``) never holds it in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        if path.exists():  # a replaced file keeps its permissions (README.md, registry.toml)
            os.fchmod(fd, path.stat().st_mode & 0o7777)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
