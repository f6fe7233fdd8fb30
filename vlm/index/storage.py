"""Telling a storage failure (a full disk, a folder that cannot be written) from any other error, and naming
the file that could not be written."""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from pathlib import Path

READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class StorageFailure(OSError):
    """A write the file system refused: `full` for no space (or a file-size limit), else not writable."""

    def __init__(self, path: Path, reason: str, full: bool):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.full = Path(path), reason, full


def classify(e: BaseException) -> str | None:
    """'full', 'read_only', or None when `e` is not a refused write."""
    if isinstance(e, StorageFailure):
        return "full" if e.full else "read_only"
    message = str(e).lower()
    if isinstance(e, OSError):
        if e.errno in FULL_ERRNOS:
            return "full"
        if e.errno in READ_ONLY_ERRNOS:
            return "read_only"
        return None
    if isinstance(e, sqlite3.OperationalError):
        if "full" in message:
            return "full"
        if "readonly" in message or "read-only" in message or "unable to open" in message:
            return "read_only"
        if "disk i/o error" in message:  # SQLite reports a write cut short by a file-size limit (EFBIG) so
            return "full"
    return None


@contextlib.contextmanager
def storage_failure(directory: Path, path: Path | None = None):
    """Re-raise a refused write as StorageFailure naming the file (`path`, or the one the OS error names)."""
    try:
        yield
    except StorageFailure:
        raise
    except (OSError, sqlite3.OperationalError) as e:
        kind = classify(e)
        if kind is None:
            raise
        name = path or Path(getattr(e, "filename", None) or directory)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise StorageFailure(name, reason, kind == "full") from e
