"""Vectors an index folder keeps in its embedding parts (DIR/parts/) instead of its item table.

A folder built from parts (`vlm index build`) stores each item's row in the parts, not a copy of its vectors:
at 10M items the vectors are 20 GB as float16 parts, and would be 41 GB more as float32 blobs in SQLite. The parts
are never written after the build, so a row number is a stable address. Items added later through the API keep
their vectors in the table as before.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

from vlm.index.errors import IndexFolderError
from vlm.index.parts import Part, RowReader, list_parts

PARTS_DIR = "parts"
OPEN_READERS = 256  # part files held open at once (least recently used closed first): 1B items are 20,000 files


def finished_parts(directory: str | Path) -> list[Part]:
    """The folder's finished parts in tag order; a damaged done marker is one line naming it."""
    try:
        return list_parts(directory)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IndexFolderError(f"{directory}/done: a done marker cannot be read ({e}); restore the folder from a "
                               "backup (vlm index backup)") from None


def verify_part(part: Part) -> list[str]:
    """Problems of one part's files against its done marker: missing, another size, another sha256."""
    marker = json.loads((part.directory / "done" / f"{part.tag}.json").read_text())
    sizes, digests = marker.get("bytes") or {}, marker.get("sha256") or {}
    problems = []
    for name in sorted(set(sizes) | set(digests)):
        path = part.directory / name
        if not path.is_file():
            problems.append(f"{path}: missing (part {part.tag})")
        elif name in sizes and path.stat().st_size != sizes[name]:
            problems.append(f"{path}: {path.stat().st_size} bytes, its done marker says {sizes[name]}")
        elif name in digests and _sha256(path) != digests[name]:
            problems.append(f"{path}: its sha256 differs from its done marker's (damaged)")
    return problems


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class PartVectors:
    """Read vectors by global row (parts in tag order, rows in file order) with pread: nothing is loaded until
    read, the page cache is shared with every other process serving the folder, and none of it counts in this
    process's RSS (it would, mapped)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.parts = finished_parts(self.directory)
        sizes = np.array([p.rows for p in self.parts], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self._readers: OrderedDict[tuple[int, str], RowReader] = OrderedDict()

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    def _rows(self, part: int, modality: str, rows: np.ndarray) -> np.ndarray:
        key = (part, modality)
        try:
            if key not in self._readers:
                self._readers[key] = self.parts[part].rows_reader(modality)
                if len(self._readers) > OPEN_READERS:
                    self._readers.popitem(last=False)[1].close()
            self._readers.move_to_end(key)
            return self._readers[key].read(rows)
        except (OSError, ValueError, IndexError) as e:
            raise IndexFolderError(f"{self.directory}: part {self.parts[part].tag} cannot be read ({e}); "
                                   "restore the folder from a backup (vlm index backup)") from None

    def read(self, modality: str, rows: np.ndarray) -> np.ndarray:
        """float32 (len(rows), dim) in the order of `rows`, L2-normalised (a zero row stays zero)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexFolderError(f"{self.directory}: row {int(rows.max())} is past the parts' {self.rows} rows; "
                                   "the parts do not match the item table")
        part_of = np.searchsorted(self.starts, rows, side="right") - 1
        out = None
        for part in np.unique(part_of):
            where = np.flatnonzero(part_of == part)
            block = self._rows(int(part), modality, rows[where] - self.starts[part]).astype(np.float32)
            if out is None:
                out = np.empty((len(rows), block.shape[1]), dtype=np.float32)
            out[where] = block
        if out is None:
            return np.zeros((0, 0), dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)  # unit again after float16's rounding
        return np.divide(out, norms, out=out, where=norms > 0)
