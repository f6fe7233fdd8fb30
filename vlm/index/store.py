"""The item table: SQLite holds every item's metadata *and* its vectors, and is the source of truth.

A vector backend (faiss, Milvus) is a search structure rebuilt or caught up from this table, so an item
is durable the moment its transaction commits: WAL with synchronous=FULL fsyncs the log on every commit,
and a `kill -9` can lose at most the vector backend's recent changes, which `ItemIndex` replays at start.
Ids come from AUTOINCREMENT and are never reused, so a stale snapshot can never confuse two items.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODALITIES = ("image", "text")

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT,
    caption TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    image_vec BLOB,
    text_vec BLOB,
    source_key TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Item:
    """One indexed thing: an image (by path) with an optional caption and free-form metadata."""

    path: str | None = None
    caption: str | None = None
    extra: dict = field(default_factory=dict)
    image_vec: np.ndarray | None = None
    text_vec: np.ndarray | None = None
    source_key: str | None = None  # position in the build's source, for resuming an interrupted build
    id: int | None = None

    def public(self) -> dict:
        return {"id": self.id, "path": self.path, "caption": self.caption, "extra": self.extra}


def _blob(vec: np.ndarray | None) -> bytes | None:
    return None if vec is None else np.ascontiguousarray(vec, dtype=np.float32).tobytes()


def _vec(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.float32)


class ItemStore:
    """Thread-safe SQLite table of items; every write is one fsynced transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    # --- metadata of the index itself
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, values: dict[str, str]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    # --- items
    def add(self, items: list[Item]) -> list[int]:
        """Insert items in one transaction; returns their new ids. Durable when this returns."""
        rows = [(i.path, i.caption, json.dumps(i.extra), _blob(i.image_vec), _blob(i.text_vec), i.source_key)
                for i in items]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = [self._db.execute(
                    "INSERT INTO items (path, caption, extra, image_vec, text_vec, source_key) "
                    "VALUES (?, ?, ?, ?, ?, ?)", row).lastrowid for row in rows]
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (disk full, I/O error) has already rolled back
                    self._db.execute("ROLLBACK")
                raise
        for item, item_id in zip(items, ids, strict=True):
            item.id = item_id
        return ids

    def delete(self, item_id: int) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM items WHERE id = ?", (item_id,)).rowcount > 0

    def get(self, item_id: int, vectors: bool = False) -> Item | None:
        items = self.get_many([item_id], vectors)
        return items[0] if items else None

    def get_many(self, ids: list[int], vectors: bool = False) -> list[Item]:
        """Items in the order of `ids`; ids that are not there are left out."""
        if not ids:
            return []
        cols = "id, path, caption, extra" + (", image_vec, text_vec" if vectors else "")
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(f"SELECT {cols} FROM items WHERE id IN ({marks})", [int(i) for i in ids])
            by_id = {row[0]: self._item(row, vectors) for row in rows}
        return [by_id[int(i)] for i in ids if int(i) in by_id]

    @staticmethod
    def _item(row: tuple, vectors: bool) -> Item:
        item = Item(id=row[0], path=row[1], caption=row[2], extra=json.loads(row[3]))
        if vectors:
            item.image_vec, item.text_vec = _vec(row[4]), _vec(row[5])
        return item

    def source_keys(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT source_key FROM items WHERE source_key IS NOT NULL")}

    def count(self, modality: str | None = None) -> int:
        """Number of items, or of items that have a vector of `modality`."""
        where = f" WHERE {_column(modality)} IS NOT NULL" if modality is not None else ""
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM items{where}").fetchone()[0]

    def ids(self, modality: str) -> np.ndarray:
        """Ids of the items that have a vector of this modality."""
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM items WHERE {_column(modality)} IS NOT NULL ORDER BY id")
            return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def vectors(self, modality: str, ids: np.ndarray | None = None,
                chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in chunks: all vectors of a modality, or those of `ids`.

        A chunk binds one parameter per id; stock SQLite allows at most 32,766 per statement."""
        column = _column(modality)
        if ids is None:
            ids = self.ids(modality)
        for start in range(0, len(ids), chunk):
            part = [int(i) for i in ids[start : start + chunk]]
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id, {column} FROM items WHERE id IN ({','.join('?' * len(part))}) "
                    f"AND {column} IS NOT NULL ORDER BY id", part).fetchall()
            if rows:
                yield (np.array([r[0] for r in rows], dtype=np.int64),
                       np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]))


def _column(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return f"{modality}_vec"
