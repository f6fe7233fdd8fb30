"""One writer per index folder: an exclusive `flock` on DIR/index.lock, with the holder's pid written inside.

The kernel drops the lock when its process exits, `kill -9` included, so a stale lock never needs cleaning.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from vlm.index.errors import IndexLockedError

LOCK_NAME = "index.lock"


def lock_holder(directory: str | Path) -> int | None:
    """The pid of the process holding the folder's lock, or None when nobody holds it (or there is no folder)."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class FolderLock:
    """Hold the folder's write lock until `release` (or the process ends)."""

    def __init__(self, directory: str | Path, purpose: str = "writes"):
        self.path = Path(directory) / LOCK_NAME
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            pid = lock_holder(directory)
            who = f"process {pid}" if pid and pid > 0 else "another process"
            raise IndexLockedError(f"{directory}: the index is in use by {who} (a vlm serve or index build); stop "
                                   f"it first, or serve this folder with --read-only") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        self.purpose = purpose

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                os.close(self.fd)
            self.fd = -1
