"""One process at a time in a folder: a run folder while it trains, an experiment folder while
its comparison runs.

The lock is an OS lock (``flock``) on a hidden file in the folder, ``.klm.lock``, which also
holds the pid of the process holding it and what it does there, so that a second process is
refused with the pid that is in its way. The OS drops the lock when its process ends, however
it ends (SIGKILL included): a lock file left by a dead process is taken over by the next one.

The file stays in the folder (removing it would let a process that opened it just before
lock a file no longer there); only a folder that ends as nothing but the lock, a start that
failed, is cleaned up. Where ``fcntl`` is missing (Windows) folders are not locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from kennethlm_core.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK = ".klm.lock"


@contextlib.contextmanager
def hold(folder: str | os.PathLike, doing: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the block, creating the folder if needed.

    ``doing`` says what this process does there ("training this run"), for the message
    another process gets: ``ConfigError`` naming this process's pid."""
    folder = Path(folder)
    if fcntl is None or (folder.exists() and not folder.is_dir()):
        yield  # nothing to lock (a file given as a folder is refused by the caller)
        return
    created = not folder.exists()
    path = folder / LOCK
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"cannot lock {folder} ({e.strerror}); is the folder writable?") from None
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
        with contextlib.suppress(OSError):
            if [p.name for p in folder.iterdir()] == [LOCK]:  # nothing written: leave no trace
                path.unlink()
                if created:
                    folder.rmdir()
        os.close(fd)  # releases the lock


def _read_holder(fd: int) -> tuple[int | None, str]:
    """The pid and the doing the holder wrote (None, "" while it has not written them yet)."""
    try:
        pid, _, doing = os.pread(fd, 200, 0).decode().strip().partition(" ")
        return int(pid), doing
    except (OSError, ValueError, UnicodeDecodeError):
        return None, ""
