"""One process at a time in a folder: a run folder while it trains, an experiment folder while
its comparison runs.

The lock is an OS lock (``flock``) on a file kept beside the token cache, under
``locks/`` and named by a hash of the folder's resolved path (nothing is ever written into a
folder of the user's for it: a refused start leaves the folder exactly as it was). The file
holds the pid of the process holding the lock and what it does there, so that a second
process is refused with the pid that is in its way. The OS drops the lock when its process
ends, however it ends (SIGKILL included): a lock file left by a dead process is taken over by
the next one. Lock files stay (removing one would let a process that opened it just before
lock a file no longer there); they are a few bytes each. Where ``fcntl`` is missing (Windows)
folders are not locked; processes on other machines sharing a network folder do not see
each other's locks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from kennethlm_core.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def lock_file(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: beside the token cache, named by its resolved path."""
    from kennethlm_core.data import cache_root  # imports torch: not at the top, for `klm --help`

    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:20]
    return cache_root() / "locks" / f"{key}.lock"


@contextlib.contextmanager
def hold(folder: str | os.PathLike, doing: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the block.

    ``doing`` says what this process does there ("training this run"), for the message
    another process gets: ``ConfigError`` naming this process's pid."""
    folder = Path(folder)
    if fcntl is None or (folder.exists() and not folder.is_dir()):
        yield  # nothing to lock (a file given as a folder is refused by the caller)
        return
    path = lock_file(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(
            f"cannot lock {folder} ({e.strerror}: {path}); is the cache folder writable?"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held by another process
        pid, theirs = _read_holder(fd)
        os.close(fd)
        who = f"pid {pid}" if pid else "another process"
        raise ConfigError(
            f"{folder} is in use: {who} is {theirs or 'using it'}; wait for it to finish or "
            "stop it, then try again"
        ) from None
    except OSError:  # a file system without locks (some network ones): go on unlocked
        pass
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {doing}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_holder(fd: int) -> tuple[int | None, str]:
    """The pid and the doing the holder wrote (None, "" while it has not written them yet)."""
    try:
        pid, _, doing = os.pread(fd, 200, 0).decode().strip().partition(" ")
        return int(pid), doing
    except (OSError, ValueError, UnicodeDecodeError):
        return None, ""
