"""The cache folder (``$KLM_CACHE``, default ~/.cache/kennethlm) and building an entry of it
once: token caches, tokenizers and hub snapshots are each built by the first process that needs
them, under a file lock, and reused by the others (``build_once``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


def cache_root() -> Path:
    return Path(os.environ.get("KLM_CACHE") or Path.home() / ".cache" / "kennethlm")


@contextmanager
def build_lock(path: Path, log: Callable[[str], None] = lambda msg: None) -> Iterator[None]:
    """Hold the lock for building ``path`` (``<path>.lock`` beside it), saying so when another
    process holds it. It is an OS lock (flock): it goes when its process dies, so a builder
    that was killed never blocks the next one. The wait has no limit, since the holder is
    busy building: a large corpus can take longer than any fixed timeout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(path.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another process that is preparing {path} (lock {lock.lock_file})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_once(
    path: Path,
    built: Callable[[], bool],
    build: Callable[[], None],
    log: Callable[[str], None] = lambda msg: None,
) -> bool:
    """Run ``build`` for ``path`` unless ``built()`` says it is there; True when it was.

    Parallel processes needing the same thing (runs of a comparison, ranks of a job) would
    otherwise each build it; here the first builds it under ``build_lock`` and the others, once
    the lock is theirs, find it built and reuse it. ``build`` must publish atomically.
    """
    if built():
        return True
    with build_lock(path, log):
        if built():  # built by the process this one waited for
            return True
        build()
    return False
