"""The commit mark: a tiny file, rewritten after every committed change, that says how far the table has come.

The table (items.sqlite) is the source of truth, but a damaged or truncated WAL, an emptied or replaced table
file, or a restored old copy each make SQLite open cleanly with committed changes missing, and then reuse their
ids. The mark is the witness: it holds the table's change counter and the highest id ever issued, written (and
fdatasynced) after each commit and before the change is acknowledged. At open a table behind its mark is refused.

Two fixed slots with a CRC, written alternately, so a torn write leaves the previous slot readable.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

MARK_NAME = "items.mark"
_SLOT = struct.Struct("<8sQQQI")  # magic, generation, changes, max_id, crc32 of the rest
_MAGIC = b"vlmmark1"
_SLOT_BYTES = 64


@dataclass(frozen=True)
class Mark:
    changes: int = 0  # committed changes (each add or delete transaction counts one)
    max_id: int = 0  # the highest item id ever issued


class MarkFile:
    def __init__(self, path: str | Path, writable: bool = True):
        self.path = Path(path)
        self.writable = writable
        self.generation = 0
        flags = os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY
        self.fd = os.open(self.path, flags, 0o644)

    def read(self) -> Mark | None:
        """The newest intact slot, or None for a new (empty) file; ValueError when no slot is intact."""
        data = os.pread(self.fd, 2 * _SLOT_BYTES, 0)
        if not data.strip(b"\0"):
            return None
        best = None
        for offset in (0, _SLOT_BYTES):
            chunk = data[offset : offset + _SLOT.size]
            if len(chunk) < _SLOT.size:
                continue
            magic, generation, changes, max_id, crc = _SLOT.unpack(chunk)
            if magic == _MAGIC and crc == zlib.crc32(chunk[: _SLOT.size - 4]) and (
                    best is None or generation > best[0]):
                best = (generation, Mark(changes, max_id))
        if best is None:
            raise ValueError(f"{self.path}: damaged (no intact slot)")
        self.generation = best[0]
        return best[1]

    def write(self, mark: Mark) -> None:
        """Durable when this returns (fdatasync)."""
        self.generation += 1
        body = _SLOT.pack(_MAGIC, self.generation, mark.changes, mark.max_id, 0)[: _SLOT.size - 4]
        slot = body + struct.pack("<I", zlib.crc32(body))
        os.pwrite(self.fd, slot, (self.generation % 2) * _SLOT_BYTES)
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
